"""The baseline of bench/intake_storm.py: an endpoint that reads the body, answers 202 and
does nothing else. Same framework and server as the intake (FastAPI under uvicorn, one process)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/alerts/{source}")
async def receive(request: Request) -> JSONResponse:
    request.path_params["source"]  # read as the intake reads it (not through FastAPI's parameters)
    await request.body()
    return JSONResponse({"accepted": 1}, status_code=202)
