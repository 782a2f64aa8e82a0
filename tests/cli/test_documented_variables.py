"""Every `EVENTFN_*` variable a service or the CLI reads is documented in the README."""

from __future__ import annotations

import re
from pathlib import Path

from services.executor.settings import ExecutorSettings
from services.registry.settings import RegistrySettings
from services.retrier.settings import RetrierSettings
from services.router.settings import RouterSettings

README = Path(__file__).parents[2] / "README.md"
SETTINGS = (RegistrySettings, RouterSettings, ExecutorSettings, RetrierSettings)


def test_every_service_variable_is_in_the_readme() -> None:
    text = README.read_text()
    variables = {f"EVENTFN_{name.upper()}" for cls in SETTINGS for name in cls.model_fields}
    assert {"EVENTFN_ROUTER_HTTP_LISTEN", "EVENTFN_RETRIER_LISTEN"} <= variables
    missing = sorted(v for v in variables if f"`{v}`" not in text)
    assert not missing, f"not documented in README.md: {', '.join(missing)}"


def test_every_variable_the_cli_reads_is_in_the_readme() -> None:
    text = README.read_text()
    cli = Path(__file__).parents[2] / "services" / "cli"
    read = {
        match
        for path in cli.glob("*.py")
        for match in re.findall(r"EVENTFN_[A-Z_]+[A-Z]", path.read_text())
    }
    read |= {f"EVENTFN_{s}_ADDR" for s in ("REGISTRY", "EXECUTOR", "RETRIER")}
    missing = sorted(v for v in read if f"`{v}`" not in text)
    assert not missing, f"not documented in README.md: {', '.join(missing)}"
