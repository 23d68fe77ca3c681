"""The development app: test and demo fakes that product apps never import.

The vLLM simulator (`manage.py vllm_simulator`), the fake Hugging Face Hub
(`manage.py fake_hub`) and the local demo (`manage.py demo_setup`, `run_demo`). It is an
installed app only so that Django finds these management commands; `proxy`, `modelmgr`,
`plumbing` and `talktuah_site` never import it (tests/test_layout.py keeps that rule).
"""
