"""The client's layout, read from the source: the screens (talktuah_chat/screens/) never
import the App (talktuah_chat/app.py), which builds them, not even for type checking."""

import ast
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "chat" / "talktuah_chat"


def imported_modules(path: Path) -> set[str]:
    """Dotted names a module imports, wherever in it (`from a import b` gives a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's own package
                package = path.relative_to(CLIENT.parent).with_suffix("").parts[: -node.level]
                base = ".".join([*package, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_no_screen_imports_the_app():
    screens = sorted((CLIENT / "screens").rglob("*.py"))
    assert len(screens) > 1
    offenders = [path.name for path in screens if "talktuah_chat.app" in imported_modules(path)]
    assert not offenders, f"screens may not import talktuah_chat.app: {offenders}"


def test_it_sees_the_imports_it_checks():
    # The check above would pass if it read nothing: the App does import the screens.
    assert "talktuah_chat.screens.chat.ChatScreen" in imported_modules(CLIENT / "app.py")
