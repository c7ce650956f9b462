"""kelp.fileid: SeaweedFS file ids, parsed strictly and formatted as SeaweedFS writes them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kelp import fileid
from kelp.fileid import FileId, FileIdError

volumes = st.integers(0, fileid.MAX_VOLUME)
keys = st.integers(0, fileid.MAX_KEY)
cookies = st.integers(0, fileid.MAX_COOKIE)
file_ids = st.builds(FileId, volumes, keys, cookies)


def test_seaweedfs_example() -> None:
    fid = fileid.parse("3,01637037d6")
    assert fid == FileId(volume=3, key=0x01, cookie=0x637037D6)
    assert str(fid) == "3,01637037d6"


def test_key_is_written_without_leading_zero_bytes() -> None:
    assert str(FileId(7, 0x1234, 0xABCDEF01)) == "7,1234abcdef01"
    assert str(FileId(7, 0x123, 1)) == "7,012300000001"  # whole bytes: 0x0123
    assert str(FileId(7, fileid.MAX_KEY, 0)) == "7,ffffffffffffffff00000000"
    assert str(FileId(7, 0, 5)) == "7,0000000005"  # key 0 keeps one byte so it parses back


def test_parse_accepts_odd_length_and_upper_case() -> None:
    assert fileid.parse("3,1637037D6") == FileId(3, 1, 0x637037D6)
    assert fileid.parse("03,01637037d6").volume == 3


@given(file_ids)
def test_format_then_parse_round_trips(fid: FileId) -> None:
    text = str(fid)
    assert fileid.parse(text) == fid
    assert str(fileid.parse(text)) == text


@given(volumes, keys, cookies, st.integers(1, 16))
def test_any_key_width_parses(volume: int, key: int, cookie: int, width: int) -> None:
    # Keys may be written with any number of digits that holds them, leading zeros included.
    digits = max(width, len(f"{key:x}"))
    text = f"{volume},{key:0{digits}x}{cookie:08x}"
    assert fileid.parse(text) == FileId(volume, key, cookie)


@pytest.mark.parametrize("text, complaint", [
    ("", "no comma"),
    ("3", "no comma"),
    ("3;01637037d6", "no comma"),
    (",01637037d6", "volume"),
    ("-3,01637037d6", "volume"),
    ("+3,01637037d6", "volume"),
    (" 3,01637037d6", "volume"),
    ("3_0,01637037d6", "volume"),
    ("٣,01637037d6", "volume"),          # Arabic-Indic digit: int() would take it
    ("4294967296,01637037d6", "volume"),  # one past uint32
    ("3,", "hex digits"),
    ("3,637037d6", "hex digits"),         # cookie only, no key
    ("3,0x01637037d6", "hex digits"),
    ("3,01637037g6", "hex digits"),
    ("3,01637037d6 ", "hex digits"),
    ("3,01637037d6\n", "hex digits"),
    ("3,01 637037d6", "hex digits"),
    ("3,01637037d6,1", "hex digits"),
    ("3," + "1" * 17 + "637037d6", "hex digits"),  # key wider than 64 bits
])
def test_bad_file_ids_are_rejected_with_a_reason(text: str, complaint: str) -> None:
    with pytest.raises(FileIdError, match=complaint):
        fileid.parse(text)


@given(st.text(max_size=40))
def test_parse_never_raises_anything_but_file_id_error(text: str) -> None:
    try:
        fid = fileid.parse(text)
    except FileIdError:
        return
    assert fileid.parse(str(fid)) == fid


@pytest.mark.parametrize("volume, key, cookie", [
    (-1, 1, 1), (2**32, 1, 1), (1, -1, 1), (1, 2**64, 1), (1, 1, -1), (1, 1, 2**32),
    (True, 1, 1), ("3", 1, 1),
])
def test_out_of_range_parts_are_rejected(volume: object, key: object, cookie: object) -> None:
    with pytest.raises(FileIdError):
        FileId(volume, key, cookie)  # type: ignore[arg-type]


def test_cookie_in_decimal_or_0x_hex() -> None:
    assert fileid.parse_cookie("1668298710") == 0x637037D6
    assert fileid.parse_cookie("0x637037d6") == 0x637037D6
    assert fileid.parse_cookie("0X637037D6") == 0x637037D6
    assert fileid.parse_cookie("0") == 0
    assert fileid.parse_cookie("4294967295") == fileid.MAX_COOKIE


@pytest.mark.parametrize("text", [
    "637037d6",       # bare hex: refused, never guessed
    "", "0x", "-1", "+1", " 1", "1_000", "0x-1", "4294967296", "0x100000000", "1.0", "٣",
])
def test_bad_cookies_are_rejected(text: str) -> None:
    with pytest.raises(FileIdError, match="cookie"):
        fileid.parse_cookie(text)


@given(cookies)
def test_cookie_spellings_agree(cookie: int) -> None:
    assert fileid.parse_cookie(str(cookie)) == fileid.parse_cookie(hex(cookie)) == cookie


def test_key_and_volume_parsers() -> None:
    assert fileid.parse_key("1") == fileid.parse_key("0x01") == 1
    assert fileid.parse_key(str(fileid.MAX_KEY)) == fileid.MAX_KEY
    assert fileid.parse_volume("3") == 3
    for bad_key in ("0x10000000000000000", "18446744073709551616", "ff"):
        with pytest.raises(FileIdError, match="needle key"):
            fileid.parse_key(bad_key)
    for bad_volume in ("0x3", "-3", "4294967296", ""):
        with pytest.raises(FileIdError, match="volume"):
            fileid.parse_volume(bad_volume)
