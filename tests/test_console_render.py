"""The console's templates: the ``num`` filter masks by role and hands operators an unmask
reference that opens only with the console's key (issue 20)."""

from __future__ import annotations

import re

import pytest

from engine.console.auth import User
from engine.console.masking import mask, seal, unseal
from engine.console.render import ENV
from engine.console.sessions import Session

ANN = "+447700900123"
KEY = b"k" * 32


def as_role(role: str, template: str = "{{ n|num }}", **ctx: object) -> str:
    me = User("someone", role, Session("someone", "csrf", 0, 0, "p:cs:x"))
    return ENV.from_string(template).render(me=me, unmask_key=KEY, n=ANN, **ctx)


def test_a_viewer_sees_a_masked_number_and_nothing_to_unmask_it_with() -> None:
    out = as_role("viewer")
    assert out == '<span class="num">+4477\u2022\u2022\u2022\u2022\u2022123</span>'
    assert as_role("viewer", "{{ n|num(full=True) }}") == out  # full is for operators only


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_an_operator_sees_it_masked_with_a_show_button_whose_ref_opens_to_the_number(role: str) -> None:
    out = as_role(role)
    assert ANN not in out and mask(ANN) in out and 'class="unmask"' in out
    refs = set(re.findall(r'data-ref="([^"]+)"', out))
    assert len(refs) == 1 and unseal(KEY, refs.pop()) == ANN
    assert as_role(role, "{{ n|num(full=True) }}") == f'<span class="num">{ANN}</span>'


def test_a_reference_opens_only_with_its_key_and_unaltered() -> None:
    ref = seal(KEY, ANN)
    assert seal(KEY, ANN) != ref  # a fresh nonce each time: the same number is not linkable
    assert unseal(b"other" * 7, ref) is None
    for i in (0, 12, 20, len(ref) - 3):  # nonce, number, tag
        assert unseal(KEY, ref[:i] + ("A" if ref[i] != "A" else "B") + ref[i + 1 :]) is None
    assert unseal(KEY, "not base64 at all!") is None and unseal(KEY, "") is None


def test_text_is_escaped_and_an_empty_number_is_nothing() -> None:
    assert as_role("viewer", "{{ x }}", x="<script>") == "&lt;script&gt;"
    assert as_role("operator", "{{ none|num }}", none=None) == ""
