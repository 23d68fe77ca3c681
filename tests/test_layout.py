"""The layout rules the code keeps (read from the source, so a stray import fails here):
`modelmgr` never imports `proxy`, `backends` (the backend's own room: its row, spec,
discovery, health records and pool) imports neither app, the shared `plumbing` imports
no app, and no
product module imports the development app `devtools`, which alone holds the simulator,
the fake Hub and the demo's commands."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("plumbing", "backends", "proxy", "modelmgr", "talktuah_site")


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports, wherever in the module the import is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def modules_of(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("modelmgr", {"proxy", "devtools"}),
        ("backends", {"proxy", "modelmgr", "talktuah_site", "devtools"}),
        ("plumbing", {"backends", "proxy", "modelmgr", "talktuah_site", "devtools"}),
        ("proxy", {"devtools"}),
        ("talktuah_site", {"devtools"}),
    ],
)
def test_it_keeps_each_package_to_its_own_imports(package, forbidden):
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & forbidden)
        for path in modules_of(package)
        if imported_packages(path) & forbidden
    }
    assert not offenders, f"{package} may not import {sorted(forbidden)}: {offenders}"


def test_it_finds_the_imports_it_checks():
    # The check above would pass on an empty tree: make sure it reads real modules.
    assert "plumbing" in imported_packages(REPO / "proxy" / "forwarding.py")
    assert "modelmgr" in imported_packages(REPO / "talktuah_site" / "api.py")
    assert all(modules_of(package) for package in PRODUCT)


REQUEST_PATH_ROOMS = ("forwarding", "holding", "relay", "accounting")


def proxy_modules_imported(path: Path) -> set[str]:
    """The `proxy.<module>` names a module imports (`from proxy import x` counts as x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1] for alias in node.names if alias.name.startswith("proxy.")
            )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "proxy":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("proxy."):
                found.add(node.module.split(".")[1])
    return found


def test_the_request_path_keeps_a_room_per_concept():
    # Forwarding leans on holding, holding on the relay, the relay on accounting; never
    # back up, so each room reads (and changes) without the ones above it.
    rooms = {room: REPO / "proxy" / f"{room}.py" for room in REQUEST_PATH_ROOMS}
    assert all(path.is_file() for path in rooms.values())
    assert not (REPO / "proxy" / "services.py").exists()
    for lower, upper in [
        ("relay", {"forwarding", "holding"}),
        ("accounting", {"forwarding", "holding", "relay"}),
        ("holding", {"forwarding"}),
    ]:
        upward = proxy_modules_imported(rooms[lower]) & upper
        assert not upward, f"proxy/{lower}.py imports {sorted(upward)}, which build on it"


def test_the_backend_has_one_home():
    # One spec, one pool, one health record per backend: no second copy elsewhere, and
    # no lifecycle service that falls back to a silent `default` backend.
    assert not (REPO / "proxy" / "pool.py").exists()
    for room in ("models", "spec", "discovery", "health", "pool"):
        assert (REPO / "backends" / f"{room}.py").is_file(), room
    services = ast.parse((REPO / "modelmgr" / "services.py").read_text())
    for node in ast.walk(services):
        if isinstance(node, ast.FunctionDef):
            names = [a.arg for a in node.args.kwonlyargs]
            if "backend" in names:
                default = node.args.kw_defaults[names.index("backend")]
                assert default is None, f"{node.name}(backend=...) has a default"
    source = (REPO / "plumbing" / "vllm.py").read_text()
    for gone in ("def probe(", "def open_request(", "_models_cache", "def default_upstream("):
        assert gone not in source, f"plumbing/vllm.py still has {gone}"


DEV_COMMANDS = {"vllm_simulator", "fake_hub", "demo_setup", "run_demo"}


def test_it_keeps_the_fakes_and_the_demo_in_devtools():
    # The simulator, the fake Hub and the demo's commands have one home: devtools.
    strays = [
        str(path.relative_to(REPO))
        for package in PRODUCT
        for path in modules_of(package)
        if path.stem in {"simulator", "fakehub", *DEV_COMMANDS} or path.parent.name == "simulator"
    ]
    assert not strays, f"development fakes outside devtools: {strays}"
    commands = {path.stem for path in (REPO / "devtools" / "management" / "commands").glob("*.py")}
    assert commands >= DEV_COMMANDS
    assert (REPO / "devtools" / "simulator").is_dir() and (
        REPO / "devtools" / "fakehub.py"
    ).is_file()


def test_the_chat_client_stands_alone():
    # chat/ installs alone on a laptop (`pipx install ./chat`): nothing of the gateway.
    modules = sorted((REPO / "chat" / "talktuah_chat").rglob("*.py"))
    assert modules
    forbidden = {"django", "ninja", "devtools", *PRODUCT}
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & forbidden)
        for path in modules
        if imported_packages(path) & forbidden
    }
    assert not offenders, f"the chat client may not import {sorted(forbidden)}: {offenders}"
