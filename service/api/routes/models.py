"""The model registry and its aliases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import AfterValidator

from models.spec import TrainingSpec
from service import registry
from service.api.auth import Principal, models_scope
from service.api.deps import ArtifactsDep, DatabaseDep, Offset, SettingsDep
from service.schemas import (
    AliasesPublic,
    AliasPublic,
    AliasSet,
    ErrorPublic,
    ModelCardPublic,
    ModelEvaluationPublic,
    ModelPublic,
    ModelsPublic,
)
from service.serving import card as cards
from service.serving import evaluation as evaluations
from service.serving.card import summarise
from service.store.tables import Model

router = APIRouter(prefix="/v1", tags=["models"])

MODEL_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic, "description": "No such model."}}
# A file's bytes, as OpenAPI 3.0 (`format: binary`) and 3.1 (`contentMediaType`) tools each read them.
DOWNLOAD = {
    "application/octet-stream": {
        "schema": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    }
}
EVALUATION_UNAVAILABLE: dict[str, Any] = {
    "model": ErrorPublic,
    "description": "A model trained before evaluations were stored, and no Fashion-MNIST data on the server.",
}
ALIAS_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic, "description": "No such alias."}}
# The pattern documents the rule (so clients and fuzzers can follow it); the validator adds what a pattern
# without look-ahead cannot say: a model id is not an alias name. Either way a 422 in FastAPI's list form.
AliasName = Annotated[
    str,
    Path(
        max_length=64,
        pattern=registry.ALIAS_PATTERN.pattern,
        description="1-64 lowercase letters, digits, '-' and '_', starting with a letter; not a model id.",
    ),
    AfterValidator(registry.check_alias_name),
]
ModelRef = Annotated[str, Path(max_length=64, description="A model id, or an alias naming one.")]


def public(model: Model, aliases: list[str]) -> ModelPublic:
    spec = TrainingSpec.model_validate(model.spec)
    return ModelPublic(
        id=model.id,
        job_id=model.job_id,
        summary=summarise(spec),
        spec=spec,
        parameters=spec.parameter_count,
        test_acc=model.test_acc,
        val_acc=model.val_acc,
        epoch=model.epoch,
        size_bytes=model.size_bytes,
        sha256=model.sha256,
        aliases=aliases,
        created_at=model.created_at,
    )


@router.get("/models", response_model=ModelsPublic)
def list_models(
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> ModelsPublic:
    """Trained models, newest first, with the aliases that point at each."""
    models, total, aliases = registry.list_models(db, limit=limit, offset=offset)
    return ModelsPublic(models=[public(m, aliases.get(m.id, [])) for m in models], count=total)


@router.get("/models/{model_ref}", response_model=ModelPublic, responses=MODEL_NOT_FOUND)
def get_model(model_ref: ModelRef, db: DatabaseDep) -> ModelPublic:
    """One model, by id or by alias."""
    model = registry.get_model(db, model_ref)
    return public(model, registry.aliases_of(db, model.id))


# The path names its parameter `model_ref` like the GET beside it: OpenAPI forbids two templates that differ
# only in a parameter's name. Only an id deletes: a model an alias names is not deleted anyway.
@router.delete(
    "/models/{model_ref}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**MODEL_NOT_FOUND, 409: {"model": ErrorPublic, "description": "An alias points at it."}},
)
def delete_model(
    model_ref: Annotated[str, Path(max_length=64, description="The model's id.")],
    db: DatabaseDep,
    artifacts: ArtifactsDep,
) -> Response:
    """Delete a model with its checkpoint and ONNX export; refused while an alias points at it."""
    registry.delete_model(db, model_ref, artifacts)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/models/{model_ref}/download",
    response_class=Response,
    responses={200: {"description": "The file.", "content": DOWNLOAD}, **MODEL_NOT_FOUND},
)
def download_model(model_ref: ModelRef, db: DatabaseDep, artifacts: ArtifactsDep) -> Response:
    """The checkpoint: a safetensors file whose header carries the spec (see the README to load it). Its bytes
    are checked against their recorded sha256 before they are sent (500 `model_unreadable` if altered)."""
    model = registry.get_model(db, model_ref)
    return _download(registry.checkpoint_of(db, model, artifacts), f"fmnist-{model.id}.safetensors", model.sha256)


@router.get(
    "/models/{model_ref}/onnx",
    response_class=Response,
    responses={200: {"description": "The file.", "content": DOWNLOAD}, **MODEL_NOT_FOUND},
)
def download_onnx(model_ref: ModelRef, db: DatabaseDep, artifacts: ArtifactsDep) -> Response:
    """The model as ONNX: input `images` float32 (batch, 28, 28) in [0, 1], output `logits` (batch, 10)."""
    model = registry.get_model(db, model_ref)
    return _download(registry.onnx_of(db, model, artifacts), f"fmnist-{model.id}.onnx")


def _download(data: bytes, filename: str, checkpoint_sha256: str | None = None) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if checkpoint_sha256 is not None:
        headers["X-Checkpoint-SHA256"] = checkpoint_sha256
    return Response(data, media_type="application/octet-stream", headers=headers)


@router.get(
    "/models/{model_ref}/evaluation",
    response_model=ModelEvaluationPublic,
    responses={**MODEL_NOT_FOUND, 503: EVALUATION_UNAVAILABLE},
)
def get_model_evaluation(model_ref: ModelRef, db: DatabaseDep, settings: SettingsDep) -> ModelEvaluationPublic:
    """The model's evaluation on the test split (and validation split): confusion matrix, per-class precision,
    recall and F1, most-confused pairs, calibration (ECE, reliability bins) and most confident mistakes."""
    # A plain def: FastAPI runs it in the thread pool, and a model trained before evaluations were stored is
    # evaluated here, once (about a second), then kept on its row.
    model, evaluation = evaluations.model_evaluation(db, settings, model_ref)
    return ModelEvaluationPublic.model_validate({**evaluation, "model_id": model.id})


@router.get(
    "/models/{model_ref}/card",
    response_model=ModelCardPublic,
    responses={**MODEL_NOT_FOUND, 503: EVALUATION_UNAVAILABLE},
)
def get_model_card(
    model_ref: ModelRef, db: DatabaseDep, settings: SettingsDep, caller: Annotated[Principal, Depends(models_scope)]
) -> ModelCardPublic:
    """The model's card: its spec and size, the epoch it keeps and why, its evaluation, lineage (job, sweep or
    study trial, attempts), provenance (data digests, seed, code and torch versions, device, training time),
    the input it expects and its known limits on real uploads."""
    # A plain def, like the evaluation's: a model without a stored evaluation is evaluated here, in the thread pool.
    card = cards.model_card(db, settings, model_ref, tracking=caller.allows("train"))
    return ModelCardPublic.model_validate(card)


@router.get("/aliases", response_model=AliasesPublic)
def list_aliases(db: DatabaseDep) -> AliasesPublic:
    """Every alias and the model it points at."""
    return AliasesPublic(aliases=[AliasPublic.model_validate(alias) for alias in registry.list_aliases(db)])


@router.get("/aliases/{name}", response_model=AliasPublic, responses=ALIAS_NOT_FOUND)
def get_alias(name: AliasName, db: DatabaseDep) -> AliasPublic:
    """Where one alias points."""
    return AliasPublic.model_validate(registry.get_alias(db, name))


@router.put(
    "/aliases/{name}",
    response_model=AliasPublic,
    responses={
        201: {"model": AliasPublic, "description": "Alias created."},
        400: {"model": ErrorPublic, "description": "The body could not be read: JSON is UTF-8."},
        **MODEL_NOT_FOUND,
    },
)
def set_alias(name: AliasName, body: AliasSet, db: DatabaseDep, response: Response) -> AliasPublic:
    """Point an alias at a model; the next /v1/predict that names it gets the new model, no restart needed."""
    alias, created = registry.set_alias(db, name, body.model_id)
    if created:
        response.status_code = status.HTTP_201_CREATED
    return AliasPublic.model_validate(alias)


@router.delete("/aliases/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=ALIAS_NOT_FOUND)
def delete_alias(name: AliasName, db: DatabaseDep) -> Response:
    """Remove an alias (the model stays)."""
    registry.delete_alias(db, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
