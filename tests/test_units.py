"""Sizes as users write them: IEC units, exact decimal pages, and clear refusals."""
import pytest

from fabric._units import format_size, parse_size
from fabric.errors import InvalidArgument

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize("text, nbytes", [
    ("4096", 4096), ("4096B", 4096), ("4096 b", 4096), (4096, 4096), (4096.0, 4096),
    ("64KiB", 64 * KiB), ("64 kib", 64 * KiB), ("512MiB", 512 * MiB), ("512 MIB", 512 * MiB),
    ("1GiB", GiB), ("1gi", GiB), ("2TiB", 2 * TiB), ("1.5GiB", 3 * GiB // 2),
    ("0.5MiB", 512 * KiB), ("8GB", 8 * 10**9), ("4096kB", 4096 * 1000), ("1TB", 10**12),
    ("  16 MiB  ", 16 * MiB),
])
def test_accepted_sizes(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text, hint", [
    ("1GB", "did you mean 1GiB?"), ("1MB", "did you mean 1MiB?"), ("100kB", "did you mean 100KiB?"),
    ("512m", "did you mean 512MiB?"), ("2g", "did you mean 2GiB?"), ("1k", "did you mean 1KiB?"),
    ("1.5GB", "did you mean 1.5GiB?"),
])
def test_inexact_or_ambiguous_sizes_suggest_iec(text, hint):
    with pytest.raises(InvalidArgument) as exc:
        parse_size(text, "--device-size")
    msg = str(exc.value)
    assert hint in msg and msg.startswith("--device-size:") and "\n" not in msg


@pytest.mark.parametrize("value", [
    "0", 0, "0MiB", "-1", -4096, "-1GiB", "1.3B", "0.1KiB", 1.5, "lots", "", "1 GiB B", "1XB",
    True, None, [4096], 1 << 64, "16EiB", f"{1 << 64}", "16777216TiB",
])
def test_refused_sizes(value):
    with pytest.raises(InvalidArgument):
        parse_size(value)


def test_zero_only_when_allowed():
    assert parse_size("0", allow_zero=True) == 0 == parse_size(0, allow_zero=True)
    with pytest.raises(InvalidArgument, match="negative"):
        parse_size("-1MiB", allow_zero=True)


def test_largest_size():
    assert parse_size((1 << 64) - 1) == (1 << 64) - 1
    assert parse_size("16777215TiB") == 16777215 * TiB


def test_format_size():
    assert format_size(512 * MiB) == "512.0 MiB" and format_size(100) == "100 B"
