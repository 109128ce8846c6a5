"""core.idempotency.request_fingerprint: a retry of the same request hashes the same,
any change a client could make to what it asks for hashes differently, and uploads are
read whole and left rewound for the view."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict

from core.idempotency import request_fingerprint

PATH = "/v1/images/generations"
BODY = {"model": "dall-e-2", "prompt": "a cat", "n": 2, "size": "256x256", "extra": {"a": 1, "b": [1, 2]}}


def fingerprint(method: str = "POST", path: str = PATH, data=None, files=None) -> str:
    return request_fingerprint(method=method, path=path, data=BODY if data is None else data, files=files)


def upload(data: bytes, name: str = "image.png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="image/png")


def uploads(**fields: list[bytes]) -> MultiValueDict:
    """What request.FILES is: field name -> one or more uploads."""
    return MultiValueDict({name: [upload(data) for data in datas] for name, datas in fields.items()})


def form(*pairs: tuple[str, str]) -> QueryDict:
    data = QueryDict(mutable=True)
    for key, value in pairs:
        data.appendlist(key, value)
    return data


def test_same_body_in_another_key_order_hashes_the_same():
    reordered = {"extra": {"b": [1, 2], "a": 1}, "size": "256x256", "n": 2, "prompt": "a cat", "model": "dall-e-2"}
    assert fingerprint(data=reordered) == fingerprint()


def test_same_form_fields_in_another_order_hash_the_same():
    one = form(("model", "dall-e-2"), ("prompt", "a cat"), ("n", "2"))
    other = form(("n", "2"), ("prompt", "a cat"), ("model", "dall-e-2"))
    assert fingerprint(data=one) == fingerprint(data=other)


@pytest.mark.parametrize(
    "change",
    [
        {"method": "PUT"},
        {"path": "/v1/images/edits"},
        {"data": {**BODY, "prompt": "a dog"}},
        {"data": {**BODY, "n": 3}},
        {"data": {**BODY, "n": "2"}},  # the type is part of the request
        {"data": {**BODY, "extra": {"a": 1, "b": [2, 1]}}},  # list order is
        {"data": {**BODY, "user": "u1"}},
        {"data": {k: v for k, v in BODY.items() if k != "size"}},
    ],
)
def test_another_method_path_or_body_hashes_differently(change):
    assert fingerprint(**change) != fingerprint()


def test_a_repeated_form_field_counts_every_value():
    assert fingerprint(data=form(("tag", "a"), ("tag", "b"))) != fingerprint(data=form(("tag", "a")))
    assert fingerprint(data=form(("tag", "a"), ("tag", "b"))) != fingerprint(data=form(("tag", "b")))
    assert fingerprint(data=form(("tag", "a"), ("tag", "b"))) != fingerprint(data=form(("tag", "b"), ("tag", "a")))


def test_same_file_bytes_hash_the_same_and_other_bytes_differently():
    same = fingerprint(files=uploads(image=[b"\x89PNG one"]))
    assert fingerprint(files=uploads(image=[b"\x89PNG one"])) == same
    assert fingerprint(files=uploads(image=[b"\x89PNG two"])) != same
    assert fingerprint(files=uploads(image=[b"\x89PNG one"], mask=[b"m"])) != same
    assert fingerprint(files=uploads(mask=[b"\x89PNG one"])) != same  # the field name counts
    assert fingerprint() != same


def test_every_file_of_a_repeated_field_is_hashed():
    two = fingerprint(files=uploads(**{"image[]": [b"first", b"second"]}))
    assert fingerprint(files=uploads(**{"image[]": [b"first", b"other"]})) != two
    assert fingerprint(files=uploads(**{"image[]": [b"other", b"second"]})) != two
    assert fingerprint(files=uploads(**{"image[]": [b"first"]})) != two
    assert fingerprint(files=uploads(**{"image[]": [b"second"]})) != two


def test_a_file_larger_than_one_chunk_is_hashed_whole():
    big = b"x" * (SimpleUploadedFile.DEFAULT_CHUNK_SIZE + 10)
    assert fingerprint(files=uploads(image=[big])) != fingerprint(files=uploads(image=[big[:-1] + b"y"]))


def test_uploads_are_rewound_for_the_view_to_read():
    files = uploads(image=[b"\x89PNG image bytes"], mask=[b"mask bytes", b"second mask"])
    files["image"].read(3)  # even one already partly read is hashed whole
    first = fingerprint(files=files)
    assert [f.read() for f in files.getlist("mask")] == [b"mask bytes", b"second mask"]
    assert files["image"].read() == b"\x89PNG image bytes"
    for name in files:
        for item in files.getlist(name):
            item.seek(0)
    assert fingerprint(files=files) == first


def test_bytes_moved_between_two_files_hash_differently():
    assert fingerprint(files=uploads(image=[b"Xmask"], mask=[b"Y"])) != fingerprint(
        files=uploads(image=[b"X"], mask=[b"maskY"])
    )
