import pytest


@pytest.fixture(scope="session")
def debug_gen():
    from melody_edge import Generator

    return Generator("debug")
