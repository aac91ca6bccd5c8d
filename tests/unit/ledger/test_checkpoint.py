"""C2SP tlog-checkpoint note text: canonical formatting and a strict parser."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.ledger.checkpoint import (
    MAX_TREE_SIZE,
    Checkpoint,
    format_checkpoint,
    parse_checkpoint,
)
from middleware.ledger.errors import MalformedError

from .vectors import SPEC_CHECKPOINT_BODY

ROOT = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
ROOT_B64 = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
URLSAFE = base64.urlsafe_b64encode(bytes([0xFB]) * 32).decode()  # has '-' and '_'


def test_spec_example_parses_and_formats_back() -> None:
    checkpoint = parse_checkpoint(SPEC_CHECKPOINT_BODY)
    assert checkpoint == Checkpoint("example.com/behind-the-sofa", 20852163, ROOT)
    assert format_checkpoint(checkpoint) == checkpoint.body() == SPEC_CHECKPOINT_BODY


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(f"log\n0\n{ROOT_B64}\n", Checkpoint("log", 0, ROOT), id="empty-tree"),
        pytest.param(
            f"log\n18446744073709551615\n{ROOT_B64}\n",
            Checkpoint("log", MAX_TREE_SIZE, ROOT),
            id="largest-size",
        ),
        pytest.param(
            f"log\n5\n{ROOT_B64}\next one\n\u2014 two\n",
            Checkpoint("log", 5, ROOT, ("ext one", "\u2014 two")),
            id="extension-lines",
        ),
        pytest.param(
            f"go.sum database tree\n5\n{ROOT_B64}\n",
            Checkpoint("go.sum database tree", 5, ROOT),
            id="origin-with-spaces",
        ),
    ],
)
def test_valid_bodies(body: str, expected: Checkpoint) -> None:
    assert parse_checkpoint(body) == expected
    assert expected.body() == body


MALFORMED = [
    pytest.param(SPEC_CHECKPOINT_BODY[:-1], id="missing-final-newline"),
    pytest.param("log\n5\n", id="two-lines"),
    pytest.param(f"\n5\n{ROOT_B64}\n", id="empty-origin"),
    pytest.param(f"log\n\n5\n{ROOT_B64}\n", id="blank-line"),
    pytest.param(f"log\n5\n{ROOT_B64}\n\n", id="trailing-blank-line"),
    pytest.param(f"log\n5\n{ROOT_B64}\n\next\n", id="blank-before-extension"),
    pytest.param(f"log\n05\n{ROOT_B64}\n", id="leading-zero"),
    pytest.param(f"log\n00\n{ROOT_B64}\n", id="double-zero"),
    pytest.param(f"log\n+5\n{ROOT_B64}\n", id="plus-sign"),
    pytest.param(f"log\n-1\n{ROOT_B64}\n", id="negative"),
    pytest.param(f"log\n 5\n{ROOT_B64}\n", id="leading-space"),
    pytest.param(f"log\n5 \n{ROOT_B64}\n", id="trailing-space"),
    pytest.param(f"log\n0x10\n{ROOT_B64}\n", id="hex"),
    pytest.param(f"log\n1_000\n{ROOT_B64}\n", id="underscore"),
    pytest.param(f"log\n\u0663\n{ROOT_B64}\n", id="arabic-indic-digit"),
    pytest.param(f"log\n18446744073709551616\n{ROOT_B64}\n", id="size-above-uint64"),
    pytest.param(f"log\n{'9' * 5000}\n{ROOT_B64}\n", id="size-with-5000-digits"),
    pytest.param("log\n5\nnot base64!\n", id="bad-base64"),
    pytest.param(f"log\n5\n{ROOT_B64[:-1]}\n", id="missing-padding"),
    pytest.param(f"log\n5\n{ROOT_B64[:-2]}J=\n", id="non-canonical-base64"),
    pytest.param(f"log\n5\n{base64.b64encode(ROOT[:31]).decode()}\n", id="31-byte-root"),
    pytest.param(f"log\n5\n{base64.b64encode(ROOT + b'x').decode()}\n", id="33-byte-root"),
    pytest.param(f"log\n5\n{URLSAFE}\n", id="url-safe-base64"),
    pytest.param(f"log\r\n5\r\n{ROOT_B64}\r\n", id="crlf"),
    pytest.param(f"log\t1\n5\n{ROOT_B64}\n", id="control-character"),
]


@pytest.mark.parametrize("body", MALFORMED)
def test_malformed_bodies_are_rejected(body: str) -> None:
    with pytest.raises(MalformedError):
        parse_checkpoint(body)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"origin": ""}, id="empty-origin"),
        pytest.param({"origin": "a\nb"}, id="origin-newline"),
        pytest.param({"origin": "a\x00b"}, id="origin-control"),
        pytest.param({"size": -1}, id="negative-size"),
        pytest.param({"size": MAX_TREE_SIZE + 1}, id="size-above-uint64"),
        pytest.param({"root_hash": b"x" * 31}, id="short-root"),
        pytest.param({"extensions": ("",)}, id="empty-extension"),
        pytest.param({"extensions": ("a\nb",)}, id="extension-newline"),
    ],
)
def test_invalid_checkpoint_cannot_be_built(fields: dict[str, object]) -> None:
    base: dict[str, object] = {"origin": "log", "size": 1, "root_hash": ROOT}
    with pytest.raises(MalformedError):
        Checkpoint(**(base | fields))  # type: ignore[arg-type]


line = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1)


@given(
    origin=line,
    size=st.integers(0, MAX_TREE_SIZE),
    root_hash=st.binary(min_size=32, max_size=32),
    extensions=st.lists(line, max_size=3).map(tuple),
)
def test_format_then_parse_is_identity(
    origin: str, size: int, root_hash: bytes, extensions: tuple[str, ...]
) -> None:
    checkpoint = Checkpoint(origin, size, root_hash, extensions)
    assert parse_checkpoint(checkpoint.body()) == checkpoint
