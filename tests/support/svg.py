"""Reading the figures the service draws: SVG parsed, and its text, groups and ids found."""

from __future__ import annotations

import xml.etree.ElementTree as ET

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: bytes) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def group(root: ET.Element, gid: str) -> ET.Element:
    found = root.find(f".//{SVG}g[@id='{gid}']")
    assert found is not None, f"no <g id={gid!r}>"
    return found


def ids(root: ET.Element, prefix: str) -> list[str]:
    return [element.get("id", "") for element in root.iter() if element.get("id", "").startswith(prefix)]


def texts(element: ET.Element) -> list[str]:
    return [text.text or "" for text in element.iter(f"{SVG}text")]
