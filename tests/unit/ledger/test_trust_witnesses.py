"""The trust policy's witnesses and quorum (``ledger.trust``) and the rule verifiers apply
with them (``ledger.quorum``): parsing, formatting, and the findings of each failure."""

from __future__ import annotations

import pytest

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import MalformedError
from middleware.ledger.quorum import FUTURE_SKEW, quorum_finding
from middleware.ledger.signing import Cosigner, SigningKey
from middleware.ledger.trust import TrustedWitness, TrustPolicy, format_policy, parse_policy
from middleware.ledger.witnesses import with_cosignatures
from tests.contract.helpers import KEY, ORIGIN
from tests.unit.ledger.logs import POLICY

W1 = Cosigner.generate("w1.test")
W2 = Cosigner.generate("w2.test")
W3 = Cosigner.generate("w3.test")
#: W1's private key under another name: one party, two vkeys that differ only by the name.
W1_ALIAS = Cosigner("w1-alias.test", bytes.fromhex("11" * 32))
W1_SAME = Cosigner("w1-same.test", bytes.fromhex("11" * 32))
CHECKPOINT = Checkpoint(ORIGIN, 5, bytes(range(32)))
NOTE = KEY.sign_checkpoint(CHECKPOINT)


def policy(quorum: int, *witnesses: Cosigner) -> TrustPolicy:
    return TrustPolicy(
        ORIGIN, POLICY.keys, tuple(TrustedWitness(w.vkey()) for w in witnesses), quorum
    )


def cosigned(*witnesses: Cosigner, body: str = CHECKPOINT.body()) -> str:
    return with_cosignatures(
        NOTE, [w.cosign(body, 1_700_000_000).note_signature() for w in witnesses]
    )


def test_policy_with_witnesses_round_trips_through_toml() -> None:
    rules = policy(2, W1, W2)
    text = format_policy(rules)
    assert "quorum = 2" in text
    assert text.count("[[witnesses]]") == 2
    assert parse_policy(text) == rules
    assert parse_policy(format_policy(POLICY)) == POLICY  # no witnesses: no quorum line
    assert "quorum" not in format_policy(POLICY)


@pytest.mark.parametrize(
    "extra",
    [
        "quorum = -1\n",
        'quorum = "2"\n',
        "quorum = true\n",
        f'[[witnesses]]\nvkey = "{KEY.vkey()}"\n',  # a log key is not a witness key
        f'[[witnesses]]\nvkey = "{W1.vkey()}"\nname = "w2.test"\n',
        f'[[witnesses]]\nvkey = "{W1.vkey()}"\n\n[[witnesses]]\nvkey = "{W1.vkey()}"\n',
        f'[[witnesses]]\nvkey = "{W1.vkey()}"\nweight = 2\n',
        'witnesses = "w1"\n',
        f'[[witnesses]]\nvkey = "{W1_ALIAS.vkey()}"\n\n[[witnesses]]\nvkey = "{W1_SAME.vkey()}"\n',
    ],
    ids=[
        "negative",
        "string",
        "boolean",
        "log-key",
        "wrong-name",
        "twice",
        "unknown",
        "not-tables",
        "one-key-two-names",
    ],
)
def test_bad_witness_policies_are_refused(extra: str) -> None:
    head, _, tables = format_policy(POLICY).partition("\n[[keys]]")
    top, witness_tables = (extra, "") if not extra.startswith("[[") else ("", extra)
    text = f"{head}\n{top}\n[[keys]]{tables}\n{witness_tables}"
    with pytest.raises(MalformedError):
        parse_policy(text)


def test_one_key_under_two_names_cannot_make_a_quorum_of_two() -> None:
    """Two vkeys that differ only by the name are one party: the policy is refused, so a
    note that key cosigned under both names never passes a quorum of 2."""
    assert W1_ALIAS.vkey() != W1_SAME.vkey()
    with pytest.raises(MalformedError, match="public key once"):
        policy(2, W1_ALIAS, W1_SAME)


def test_rotation_keeps_the_witnesses() -> None:
    rules = policy(1, W1)
    successor = SigningKey.generate(ORIGIN)
    after = rules.rotated(POLICY.keys[0].vkey, 9, successor.vkey(), 10)
    assert (after.witnesses, after.quorum) == (rules.witnesses, 1)


# -- the verifiers' rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "note", "code"),
    [
        (policy(0), NOTE, None),
        (policy(2, W1, W2), cosigned(W1, W2), None),
        (policy(2, W1, W2, W3), cosigned(W3, W1), None),
        (policy(1, W1), cosigned(W1, W2), None),  # a witness the policy does not name: ignored
        (policy(2, W1, W2), cosigned(W1), "witness-quorum"),
        (policy(1, W1), NOTE, "witness-quorum"),
        (policy(1, W1), None, "witness-quorum"),
        (policy(1), cosigned(W1), "witness-quorum"),  # a quorum without witnesses
        (policy(3, W1, W2), cosigned(W1, W2), "witness-quorum"),
        (policy(1, W1), cosigned(W1, body=CHECKPOINT.body() + "x\n"), "witness-cosignature"),
    ],
    ids=[
        "no-quorum",
        "two-of-two",
        "two-of-three",
        "stranger-ignored",
        "one-of-two",
        "uncosigned",
        "none-given",
        "no-witnesses",
        "unmeetable",
        "invalid-cosignature",
    ],
)
def test_quorum_finding(rules: TrustPolicy, note: str | None, code: str | None) -> None:
    found = quorum_finding(note, rules)
    assert (found[0] if found else None) == code


@pytest.mark.parametrize(
    ("skew", "code"),
    [
        (0, None),
        (FUTURE_SKEW, None),
        (FUTURE_SKEW + 1, "witness-cosignature"),
        (2**40, "witness-cosignature"),
    ],
    ids=["now", "within-skew", "past-skew", "far-future"],
)
def test_a_cosignature_dated_in_the_future_fails(skew: int, code: str | None) -> None:
    """tlog-cosignature lets verifiers reject future timestamps: past FUTURE_SKEW of the
    verifier's clock, the line is a broken or lying witness's."""
    now = 1_700_000_000
    note = with_cosignatures(NOTE, [W1.cosign(CHECKPOINT.body(), now + skew).note_signature()])
    finding = quorum_finding(note, policy(1, W1), now=now)
    assert (finding and finding[0]) == code


def test_the_clock_is_the_default_now() -> None:
    far = with_cosignatures(NOTE, [W1.cosign(CHECKPOINT.body(), 2**62).note_signature()])
    finding = quorum_finding(far, policy(1, W1))
    assert finding is not None
    assert finding[0] == "witness-cosignature"
