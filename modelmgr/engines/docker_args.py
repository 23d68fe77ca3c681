"""How the docker engine rewrites a vLLM container: the model and served name in its
command line (`--model`, `vllm serve <model>`, `--served-model-name`), and the
container's settings turned into a create request for its successor. Pure functions
over what Docker reports, tested without a daemon."""

from pathlib import Path
from typing import Any


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


def _covered_destinations(host_config: dict[str, Any]) -> set[str]:
    destinations = {bind.split(":")[1] for bind in host_config.get("Binds") or [] if ":" in bind}
    destinations |= {mount.get("Target") for mount in host_config.get("Mounts") or []}
    return destinations


def endpoints(attrs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's networks as create/connect EndpointConfigs (user settings only)."""
    mode = attrs["HostConfig"].get("NetworkMode") or "default"
    if mode in ("host", "none") or mode.startswith("container:"):
        return {}
    short_id = attrs["Id"][:12]
    found = {}
    for network, network_settings in (
        attrs.get("NetworkSettings", {}).get("Networks") or {}
    ).items():
        if network == "bridge" and mode in ("default", "bridge"):
            continue  # the default network: NetworkMode says it all
        endpoint: dict[str, Any] = {}
        for key in ("IPAMConfig", "Links", "DriverOpts"):
            if network_settings.get(key):
                endpoint[key] = network_settings[key]
        # Docker adds the container's short id as an alias; the new one gets its own.
        aliases = [alias for alias in network_settings.get("Aliases") or [] if alias != short_id]
        if aliases:
            endpoint["Aliases"] = aliases
        found[network] = endpoint
    return found


def create_config(attrs: dict[str, Any], cmd: list[str]) -> dict[str, Any]:
    """A /containers/create body: the old container's settings, with cmd as arguments.

    Config (image, entrypoint, env, labels, exposed ports, ...) and HostConfig (device
    requests, binds, mounts, port bindings, restart policy, ipc mode, shm size, runtime,
    ...) are passed on whole, as Docker reports them: nothing the operator set is lost.
    """
    config = dict(attrs["Config"])
    config["Cmd"] = cmd
    if config.get("Hostname") == attrs["Id"][:12]:
        del config["Hostname"]  # Docker's default; the new container gets its own
    host_config = dict(attrs["HostConfig"])
    # Anonymous volumes (image VOLUMEs, `-v /path`) would be created afresh; keep the
    # old ones (a model cache, say) by naming them.
    covered = _covered_destinations(host_config)
    kept = [
        f"{mount['Name']}:{mount['Destination']}"
        for mount in attrs.get("Mounts") or []
        if mount.get("Type") == "volume" and mount.get("Destination") not in covered
    ]
    if kept:
        host_config["Binds"] = [*(host_config.get("Binds") or []), *kept]
    config["HostConfig"] = host_config
    mode = host_config.get("NetworkMode") or "default"
    by_network = endpoints(attrs)
    if mode in by_network:
        config["NetworkingConfig"] = {"EndpointsConfig": {mode: by_network[mode]}}
    return config
