"""Building blocks both apps use, owned by neither (like healthchecks' `hc/lib`): the
error tree, the vLLM and GPU adapters, and database calls from async code. Nothing here
imports `proxy` or `modelmgr`."""
