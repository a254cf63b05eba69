"""The Dockerfile, checked without Docker (no daemon runs here, so it is never built in CI):
parsed by BuildKit's own parser (PyPI `dockerfile`), linted by hadolint, and read for what the
images must be: targets `node` and `operator`, every COPY source present in the build context,
binaries that the workspace really builds, a non-root user, no shell needed at run time."""

from __future__ import annotations

import re
import tomllib

import dockerfile
import pytest

from conftest import REPO, run, venv_tool

DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def commands() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def stages(commands) -> dict[str, list]:
    """Stage name -> its instructions, in order (FROM starts a stage)."""
    out: dict[str, list] = {}
    current = None
    for cmd in commands:
        if cmd.cmd == "FROM":
            value = list(cmd.value)
            name = value[2].lower() if len(value) == 3 and value[1].upper() == "AS" else f"#{len(out)}"
            current = out.setdefault(name, [])
        if current is not None:
            current.append(cmd)
    return out


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**/` any directories, `*` and `?` within one."""
    out = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        elif glob[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif glob[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(glob[i]), i + 1
    return re.compile(out + "$")


def ignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` (relative to the repo) out of the build context: the
    last pattern matching it or one of its parent directories decides (`!` re-includes)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = _pattern(line.lstrip("!").strip("/"))
        if any(pattern.match(p) for p in prefixes):
            result = not negate
    return result


def workspace_binaries() -> set[str]:
    names = set()
    for manifest in REPO.glob("*/Cargo.toml"):
        for b in tomllib.loads(manifest.read_text()).get("bin", []):
            names.add(b["name"])
    return names


def test_hadolint_finds_nothing():
    result = run([venv_tool("hadolint"), "--no-color", str(DOCKERFILE)])
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buildkit_parses_it_into_builder_node_and_operator_stages(commands):
    names = list(stages(commands))
    assert names == ["builder", "node", "operator"], names
    assert commands[0].cmd == "ARG", "base images are chosen by ARGs declared before FROM"


def test_every_copy_source_is_in_the_build_context(commands):
    for cmd in commands:
        if cmd.cmd != "COPY" or any(f.startswith("--from") for f in cmd.flags):
            continue
        *sources, _dest = cmd.value
        for source in sources:
            path = REPO / source
            assert path.exists(), f"line {cmd.start_line}: {source} does not exist in the repo"
            assert not ignored(source), f"line {cmd.start_line}: {source} is in .dockerignore"


def test_the_builder_gets_the_whole_workspace():
    # Cargo needs every member's manifest (and their declared targets) to resolve the workspace.
    members = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["members"]
    copied = re.findall(r"^COPY (\S+) ", DOCKERFILE.read_text(), flags=re.M)
    for member in members:
        assert any(member == c or member.startswith(c.rstrip("/") + "/") for c in copied), member
        for sub in ("src", "tests", "benches", "static"):
            if (REPO / member / sub).exists():
                assert not ignored(f"{member}/{sub}"), f"{member}/{sub} is in .dockerignore"
    assert not ignored("Cargo.lock")


def test_the_builder_builds_the_binaries_the_runtime_images_copy(commands):
    built = set(re.findall(r"--bin (\S+)", DOCKERFILE.read_text()))
    assert built == {"roomshard-node", "roomshard-operator"}
    assert built <= workspace_binaries(), workspace_binaries()
    assert "--locked" in DOCKERFILE.read_text()


@pytest.mark.parametrize("target,binary,ports", [
    ("node", "roomshard-node", {"8080", "7070"}),
    ("operator", "roomshard-operator", {"9090"}),
])
def test_each_runtime_image_is_small_non_root_and_needs_no_shell(commands, target, binary, ports):
    stage = stages(commands)[target]
    base = stage[0].value[0]
    assert base == "${RUNTIME_IMAGE}"
    runtime = re.search(r"^ARG RUNTIME_IMAGE=(\S+)$", DOCKERFILE.read_text(), flags=re.M)[1]
    assert runtime.startswith("gcr.io/distroless/cc-") and runtime.endswith(":nonroot")
    kinds = [c.cmd for c in stage]
    assert "RUN" not in kinds, "a runtime stage with RUN needs a shell in the image"
    (copy,) = [c for c in stage if c.cmd == "COPY"]
    assert copy.flags == ("--from=builder",)
    assert copy.value == (f"/out/{binary}", f"/usr/local/bin/{binary}")
    (user,) = [c.value[0] for c in stage if c.cmd == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    (entrypoint,) = [c for c in stage if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json, "exec form: no /bin/sh -c"
    assert entrypoint.value == (f"/usr/local/bin/{binary}",)
    (expose,) = [c for c in stage if c.cmd == "EXPOSE"]
    assert set(expose.value) == ports


def test_the_chart_runs_the_operator_as_the_images_user():
    from conftest import render

    pod = render().one("Deployment")["spec"]["template"]["spec"]
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), flags=re.M)
    assert pod["securityContext"]["runAsUser"] == int(user[1])
    assert pod["securityContext"]["runAsGroup"] == int(user[2])


def test_the_builder_toolchain_is_at_least_the_workspaces_rust_version():
    need = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    have = re.search(r"^ARG RUST_VERSION=(\S+)$", DOCKERFILE.read_text(), flags=re.M)[1]
    assert tuple(map(int, have.split("."))) >= tuple(map(int, need.split(".")[:2])), (have, need)


def test_include_str_files_are_copied():
    # node embeds its chat page with include_str!: whatever a crate embeds must be in context.
    for source in REPO.glob("*/src/**/*.rs"):
        for rel in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', source.read_text()):
            embedded = (source.parent / rel).resolve().relative_to(REPO)
            assert (REPO / embedded).exists() and not ignored(str(embedded)), embedded


def test_the_ignore_matcher_matches_like_docker():
    assert ignored("target/debug/x") and ignored("tests/browser") and ignored(".git")
    assert ignored("node/target/x") and ignored("tests/browser/node_modules/a")
    assert not ignored("node/src/main.rs") and not ignored("node/tests/cluster.rs")
    assert not ignored("Cargo.toml") and not ignored("node/static/index.html")


def test_no_venv_or_build_output_in_context():
    for name in (".venv-deploy", "target", ".git"):
        assert ignored(name), name


def test_the_images_user_is_the_one_the_operator_runs_node_pods_as():
    source = REPO / "operator" / "src" / "k8s" / "children" / "statefulset.rs"
    found = re.search(r"const RUN_AS_USER: i64 = (\d+);", source.read_text()) \
        if source.is_file() else None
    if found is None:
        pytest.skip("NOTICE: operator/src/k8s/children/statefulset.rs has no RUN_AS_USER yet")
    users = set(re.findall(r"^USER (\d+):\d+$", DOCKERFILE.read_text(), flags=re.M))
    assert users == {found[1]}, (users, found[1])
