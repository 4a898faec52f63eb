"""Several managers' addresses for the CLI (--manager A,B,C and
$PYCONTAINER_MANAGER): each checked, a bad one named in one line."""

from __future__ import annotations

import io

import pytest

from pycontainer.cli import main
from pycontainer.client import TargetError, manager_targets


def test_several_addresses_are_each_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert manager_targets("10.0.0.1:50050, 10.0.0.2:50050,") == [
        "10.0.0.1:50050",
        "10.0.0.2:50050",
    ]
    assert manager_targets("10.0.0.1:50050") == ["10.0.0.1:50050"]
    with pytest.raises(TargetError, match=r"'10\.0\.0\.2' has no port"):
        manager_targets("10.0.0.1:50050,10.0.0.2")
    monkeypatch.setenv("PYCONTAINER_MANAGER", "10.0.0.1:1,http://10.0.0.2:2")
    with pytest.raises(TargetError, match=r"^\$PYCONTAINER_MANAGER: .* has a scheme"):
        manager_targets()


def test_a_bad_second_address_is_a_usage_error_naming_it() -> None:
    err = io.StringIO()
    assert main(["--manager", "127.0.0.1:1,127.0.0.1", "ps"], stdout=io.StringIO(), stderr=err) == 1
    assert "usage: pycontainer" in err.getvalue()
    assert "'127.0.0.1' has no port" in err.getvalue()
    assert "Traceback" not in err.getvalue()
