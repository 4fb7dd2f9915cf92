"""The README's config reference is generated from the config docstrings and must be up to date."""

from deita.docs import END, START, config_reference, field_docs
from tests.helpers import REPO_ROOT


def test_readme_config_reference_is_current():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert section == config_reference().strip(), "run: python -m deita.docs --write README.md"


def test_every_config_field_has_a_docstring():
    import dataclasses

    from deita import config, stages
    from deita.selection.base import SELECTORS

    classes = [c for c in vars(config).values() if dataclasses.is_dataclass(c)]
    classes += [SELECTORS.get(n).config_class for n in SELECTORS.names()]
    classes += [s.config for s in stages.pipeline_order() if s.config is not None]
    missing = []
    for cls in classes:
        docs = field_docs(cls)
        hints = {f.name: f for f in dataclasses.fields(cls)}
        for name, f in hints.items():
            nested = f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory())
            if name not in docs and not nested:
                missing.append(f"{cls.__name__}.{name}")
    assert not missing, f"config fields without a docstring: {missing}"


def test_readme_shows_the_two_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
