"""How the docker engine rewrites a vLLM container: the container's settings turned into
a create request for its successor (the command line itself is `vllm_args`'s). Pure
functions over what Docker reports, tested without a daemon."""

from typing import Any


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
