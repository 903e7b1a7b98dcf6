"""What every sevflow block does the same way: be loaded by name, or say which names exist."""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block
from pydantic import ValidationError

from sevflow.errors import ConfigurationError

B = TypeVar("B", bound=Block)


def block_names(block_type: type[Block]) -> list[str]:
    """Names of the saved blocks of this type on the server (no secrets read)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        docs = client.read_block_documents_by_type(block_type.get_block_type_slug(), include_secrets=False)
    return sorted(d.name for d in docs if d.name)


def load_named(block_type: type[B], name: str, *, what: str, known_as: str, hint: str = "",
               error: type[ConfigurationError] = ConfigurationError) -> B:
    """The block `name`, or `error` naming the ones that exist and how to make one."""
    try:
        return block_type.load(name)  # type: ignore[return-value]
    except (ValueError, RuntimeError) as exc:  # Prefect: RuntimeError "failed validation", from pydantic's error
        invalid = _validation_error(exc)
        if isinstance(exc, RuntimeError) and invalid is None:
            raise
        if invalid is not None:  # saved, but its fields break the block's rules (e.g. edited in the UI)
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'block'}: {e['msg']}" for e in invalid.errors())
            raise error(f"The {what} {name!r} is saved but not valid: {problems}. Fix it in the UI's Blocks "
                        f"page or save it again from Python.") from None  # field and rule only: pydantic's input echo could hold a secret
        known = block_names(block_type)
        listed = ", ".join(known) if known else f"none yet (create a {block_type._block_type_name} block)"
        raise error(f"No {what} named {name!r}. Known {known_as}: {listed}." + (f" {hint}" if hint else "")) from exc


def _validation_error(exc: BaseException | None) -> ValidationError | None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ValidationError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
