"""The licence file: editions, expiry, the pooling restriction and its defaults."""

import datetime

import pytest

from common.errors import ConfigError
from common.license import License, read_license

TODAY = datetime.date(2024, 6, 15)


def write(tmp_path, text):
    path = tmp_path / "license"
    path.write_text(text)
    return path


def test_missing_file_is_free_edition(tmp_path):
    assert read_license(tmp_path / "license", today=TODAY) == License(
        "free", None, False, "default (no licence file)", False)


@pytest.mark.parametrize("edition, restricted", [
    ("free", False), ("express", True), ("standard", False), ("enterprise", False),
    ("platinum", False), ("Express", True),
])
def test_edition_default_pooling_rule(tmp_path, edition, restricted):
    path = write(tmp_path, f"edition = {edition}\n")
    lic = read_license(path, today=TODAY)
    assert lic == License(edition.lower(), None, restricted, str(path), False)


def test_empty_file_is_free(tmp_path):
    path = write(tmp_path, "# nothing\n")
    assert read_license(path, today=TODAY) == License("free", None, False, str(path), False)


def test_explicit_restrict_pooling_wins(tmp_path):
    path = write(tmp_path, "edition = express\nrestrict_pooling = no\n")
    assert read_license(path, today=TODAY).restrict_pooling is False
    path = write(tmp_path, "edition = platinum\nrestrict_pooling = true\n")
    assert read_license(path, today=TODAY).restrict_pooling is True


def test_valid_through_its_expiry_day(tmp_path):
    path = write(tmp_path, "edition = express\nexpiry = 2024-06-15\n")
    lic = read_license(path, today=TODAY)
    assert (lic.edition, lic.expired, lic.restrict_pooling) == ("express", False, True)
    assert lic.expiry == datetime.date(2024, 6, 15)


def test_expired_licence_falls_back_to_free_rules(tmp_path):
    path = write(tmp_path, "edition = express\nexpiry = 2024-06-14\nrestrict_pooling = true\n")
    lic = read_license(path, today=TODAY)
    assert lic == License("free", datetime.date(2024, 6, 14), False, str(path), True)


@pytest.mark.parametrize("expiry", ["", "never", "NEVER"])
def test_no_expiry(tmp_path, expiry):
    path = write(tmp_path, f"edition = platinum\nexpiry = {expiry}\n")
    lic = read_license(path, today=TODAY)
    assert (lic.expiry, lic.expired) == (None, False)


def test_today_defaults_to_the_real_date(tmp_path):
    path = write(tmp_path, "edition = standard\nexpiry = 2000-01-01\n")
    assert read_license(path).expired is True


@pytest.mark.parametrize("text, line, key, expected", [
    ("edition = gold\n", 1, "edition", "expected one of free, express"),
    ("\nexpiry = 2024-02-30\n", 2, "expiry", "expected a date YYYY-MM-DD"),
    ("expiry = 20240101\n", 1, "expiry", "expected a date YYYY-MM-DD"),
    ("expiry = tomorrow\n", 1, "expiry", "expected a date YYYY-MM-DD"),
    ("restrict_pooling = perhaps\n", 1, "restrict_pooling", "expected true or false"),
])
def test_bad_values_name_file_line_key(tmp_path, text, line, key, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        read_license(path, today=TODAY)
    assert (err.value.path, err.value.line, err.value.key) == (path, line, key)
    assert str(err.value).startswith(f"{path}:{line}: key '{key}': {expected}")
