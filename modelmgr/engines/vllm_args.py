"""vLLM's command line as an engine rewrites it: the model and served name (`--model`,
`vllm serve <model>`, `--served-model-name`), whether vLLM runs in a container (docker)
or a pod (kubernetes). Pure functions, tested without either."""

from pathlib import Path


def _flag_name(arg: str) -> str:
    # vLLM's parser accepts --served_model_name for --served-model-name.
    return arg.split("=", 1)[0].replace("_", "-")


def flag_values(args: list[str], flag: str) -> list[str] | None:
    """The values given to flag (--flag v..., or --flag=v), or None if it is absent."""
    for i, arg in enumerate(args):
        if _flag_name(arg) == flag:
            if "=" in arg:
                return [arg.split("=", 1)[1]]
            values = []
            for value in args[i + 1 :]:
                if value.startswith("-"):
                    break
                values.append(value)
            return values
    return None


def replace_flag(args: list[str], flag: str, value: str, *, multiple: bool) -> bool:
    """Set flag's value(s) in args to value; False if the flag is absent."""
    for i, arg in enumerate(args):
        if _flag_name(arg) == flag:
            if "=" in arg:
                args[i] = f"{arg.split('=', 1)[0]}={value}"
                return True
            end = i + 1
            while end < len(args) and not args[end].startswith("-"):
                end += 1
                if not multiple:
                    break
            args[i + 1 : end] = [value]
            return True
    return False


def _serve_position(entrypoint: list[str], cmd: list[str]) -> int | None:
    """Where, in cmd, `vllm serve` takes its positional model (None: not that style)."""
    argv = [*entrypoint, *cmd]
    for i in range(1, len(argv)):
        if argv[i] == "serve" and Path(argv[i - 1]).name == "vllm":
            at = i + 1 - len(entrypoint)
            return at if at >= 0 else None
    return None


def model_from_args(entrypoint: list[str], cmd: list[str]) -> tuple[str | None, str | None]:
    """(model, served name) of a vLLM command line."""
    values = flag_values(cmd, "--model")
    model = values[0] if values else None
    if model is None:
        at = _serve_position(entrypoint, cmd)
        if at is not None and at < len(cmd) and not cmd[at].startswith("-"):
            model = cmd[at]
    names = flag_values(cmd, "--served-model-name")
    # vLLM answers to the first served name, and to the model when there is none.
    return model, names[0] if names else model


def args_with_model(
    entrypoint: list[str], cmd: list[str], *, model: str, served_name: str
) -> list[str]:
    """cmd with the model and the served name replaced (or added)."""
    args = list(cmd)
    if not replace_flag(args, "--model", model, multiple=False):
        at = _serve_position(entrypoint, args)
        if at is None:
            args += ["--model", model]
        elif at < len(args) and not args[at].startswith("-"):
            args[at] = model
        else:
            args.insert(at, model)
    if not replace_flag(args, "--served-model-name", served_name, multiple=True):
        args += ["--served-model-name", served_name]
    return args
