"""``deploy/Dockerfile``, linted statically (no container engine runs in CI): the image is
built from the wheel (with the ``[otlp]`` extra) and nothing else, runs as a fixed non-root uid, has a HEALTHCHECK on
``/readyz`` and starts ``consentry serve``; its ``CONSENTRY_*`` environment is valid settings.

That the wheel installs and serves in an empty environment, and that the HEALTHCHECK command
fails while the gateway cannot serve, is tests/integration/test_install.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.unit.deploy.files import DEPLOY, image_env, load_with, stages

DOCKERFILE = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")


def dockerfile_problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile for the gateway image; empty when nothing is."""
    problems: list[str] = []
    built = stages(text)
    if len(built) != 2:
        return [f"expected two stages (build the wheels, install them), got {len(built)}"]
    build, final = built
    if not any(i.keyword == "RUN" and "pip wheel" in i.arguments for i in build):
        problems.append("the build stage does not build wheels (pip wheel)")
    # The final stage takes nothing from the build context: only the build stage's wheels.
    for instruction in final:
        if instruction.keyword in ("COPY", "ADD") and not instruction.arguments.startswith(
            "--from="
        ):
            problems.append(f"the final stage copies from the build context: {instruction}")
    installs = [i.arguments for i in final if i.keyword == "RUN" and "pip install" in i.arguments]
    if not installs or not all("--no-index" in run and "/wheels" in run for run in installs):
        problems.append("the final stage must install from the built wheels only (--no-index)")
    # The [otlp] extra: without it otlp_endpoint stops the gateway at start (tracing.py).
    if not any("pip wheel" in i.arguments and ".[otlp]" in i.arguments for i in build):
        problems.append("the build stage must build the [otlp] extra's wheels too")
    if not any("consentry[otlp]" in run for run in installs):
        problems.append("the final stage must install consentry[otlp]")
    users = [i.arguments for i in final if i.keyword == "USER"]
    if not users:
        problems.append("no USER: the gateway would run as root")
    elif not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]):
        # Kubernetes' runAsNonRoot can only verify a numeric user; 0 is root.
        problems.append(f"USER must be a numeric non-root uid[:gid], got {users[-1]!r}")
    checks = [i.arguments for i in final if i.keyword == "HEALTHCHECK"]
    if not checks:
        problems.append("no HEALTHCHECK")
    else:
        _, _, command = checks[-1].partition(" CMD ")
        try:
            argv = json.loads(command)
        except json.JSONDecodeError:
            argv = None
        if not isinstance(argv, list) or not any("/readyz" in str(word) for word in argv):
            problems.append("the HEALTHCHECK must be an exec-form CMD that asks /readyz")
    entry = [i.arguments for i in final if i.keyword == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1])[:2] != ["consentry", "serve"]:
        problems.append('ENTRYPOINT must be ["consentry", "serve", ...]')
    if image_env(text).get("PYTHONDONTWRITEBYTECODE") != "1":
        problems.append("PYTHONDONTWRITEBYTECODE=1 missing (the root filesystem is read-only)")
    return problems


def test_the_dockerfile_passes_its_lint() -> None:
    assert dockerfile_problems(DOCKERFILE) == []


def _replace(old: str, new: str) -> str:
    assert old in DOCKERFILE, old
    return DOCKERFILE.replace(old, new)


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        # -- who runs it
        pytest.param(_replace("USER 10001:10001\n", ""), "no USER", id="no-user"),
        pytest.param(_replace("USER 10001:10001", "USER 0"), "numeric non-root", id="root"),
        pytest.param(
            _replace("USER 10001:10001", "USER consentry"), "numeric non-root", id="named-user"
        ),
        # -- what goes in
        pytest.param(
            _replace("COPY --from=build /wheels /wheels", "COPY . /src"),
            "copies from the build context",
            id="source-in-final-stage",
        ),
        pytest.param(
            _replace('--no-index --find-links /wheels "consentry[otlp]"', '"consentry[otlp]"'),
            "built wheels only",
            id="installs-from-an-index",
        ),
        pytest.param(_replace('"consentry[otlp]"', "consentry"), "[otlp]", id="no-otlp"),
        pytest.param(_replace('".[otlp]"', "."), "[otlp] extra", id="no-otlp-wheels"),
        # -- health and start
        pytest.param(_replace("/readyz", "/healthz"), "asks /readyz", id="liveness-as-health"),
        pytest.param(
            re.sub(r"HEALTHCHECK .*?\]\n", "", DOCKERFILE, flags=re.DOTALL),
            "no HEALTHCHECK",
            id="no-healthcheck",
        ),
        pytest.param(
            _replace('["consentry", "serve"]', '["python"]'), "ENTRYPOINT", id="entrypoint"
        ),
        pytest.param(
            _replace("PYTHONDONTWRITEBYTECODE=1 ", ""), "PYTHONDONTWRITEBYTECODE", id="bytecode"
        ),
    ],
)
def test_a_broken_dockerfile_is_refused(broken: str, problem: str) -> None:
    """Each lint rule can fail: a copy of the Dockerfile broken in one way is refused."""
    found = dockerfile_problems(broken)
    assert any(problem in line for line in found), found


def test_the_image_environment_is_valid_settings(tmp_path: Path) -> None:
    """The image's ``CONSENTRY_*`` variables are settings the gateway knows (an upstream
    aside, which every deployment names)."""
    env = {**image_env(DOCKERFILE), "CONSENTRY_UPSTREAM": "http://upstream:8103/fhir"}
    settings = load_with(None, env, tmp_path)
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)


def test_the_build_context_is_the_three_copied_paths() -> None:
    """``deploy/Dockerfile.dockerignore`` lets into the build context exactly what the build
    stage copies (the context is the repository root: no tests, no .git, no local keys)."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    copied = {
        word
        for i in stages(DOCKERFILE)[0]
        if i.keyword == "COPY"
        for word in i.arguments.split()[:-1]
    }
    assert "*" in ignore
    assert allowed == copied == {"pyproject.toml", "README.md", "middleware"}
