import pytest

# Before the test modules import it, so that its asserts report the values compared.
pytest.register_assert_rewrite("tests.contrib._helpers")
