"""The reference for the /v1/predict benchmark: a bare FastAPI app that takes the same upload and returns a
constant, written as a competent engineer would write it: an ``async def`` endpoint that awaits the upload's
bytes, so a request never leaves the event loop (a plain ``def`` would add a thread-pool hop per request).
Run by bench.predict_http under the same uvicorn settings as the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, File, UploadFile

app = FastAPI()

CONSTANT: dict[str, object] = {
    "model_id": "bare",
    "predictions": [{"class_id": 0, "class_name": "T-shirt/top", "probability": 1.0}],
}


@app.post("/v1/predict")
async def predict(file: Annotated[UploadFile, File()]) -> dict[str, object]:
    await file.read()
    return CONSTANT
