"""The baseline of bench/intake_storm.py: an endpoint that reads the body, answers 202 and
does nothing else, under uvicorn in one process as the intake.

`app` is written in the intake's framework (FastAPI); `asgi_app` is a plain ASGI function, the
least any Python server can do (`--bare asgi`): the intake answers alert POSTs below FastAPI's
stack, so this is the floor it is measured against there."""

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


async def asgi_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = scope["method"] == "POST"
    while more:  # read the body
        more = (await receive()).get("more_body", False)
    body = b'{"accepted":1}' if scope["method"] == "POST" else b'{"status":"ok"}'
    await send({"type": "http.response.start", "status": 202 if scope["method"] == "POST" else 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
