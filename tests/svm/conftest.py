import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.parent.name == "svm":
            item.add_marker(pytest.mark.svm)
