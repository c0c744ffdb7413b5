"""The target parser (``yaw>10``) and how a target judges measurements."""

from __future__ import annotations

import numpy as np
import pytest

from clusterguide.errors import UserError
from clusterguide.evaluation.probes import ProbeResult
from clusterguide.evaluation.targets import Target, parse_target

FACE = ["yaw", "pitch", "roll", "mouth", "ita", "hair"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("yaw>10", Target("yaw", ">", 10.0)),
        ("yaw<-10", Target("yaw", "<", -10.0)),
        ("  mouth >= 0.3 ", Target("mouth", ">=", 0.3)),
        ("mouth>=.3", Target("mouth", ">=", 0.3)),
        ("pitch <= +5", Target("pitch", "<=", 5.0)),
        ("yaw>1e1", Target("yaw", ">", 10.0)),
    ],
)
def test_parses(text, expected):
    assert parse_target(text, FACE) == expected


def test_round_trips_through_its_text():
    for text in ("yaw>10", "yaw<-10", "mouth>=0.3", "hair<=40.5"):
        assert str(parse_target(text)) == text
        assert parse_target(str(parse_target(text))) == parse_target(text)


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty target"),
        ("   ", "empty target"),
        ("yaw", "not ATTRIBUTE OP NUMBER"),
        ("yaw 10", "not ATTRIBUTE OP NUMBER"),
        ("yaw>", "no number"),
        ("yaw>ten", "'ten' is not a number"),
        ("yaw>>10", "not a number"),
        ("yaw=10", "continuous"),
        ("yaw==10", "continuous"),
        ("yaw!=10", "continuous"),
        ("yaw=>10", "write '>='"),
        ("10<yaw", "attribute first"),
        ("yaw>nan", "finite"),
        ("yaw>inf", "finite"),
        ("gender>0.5", "unknown attribute 'gender'"),
    ],
)
def test_errors_are_one_clear_line(text, words):
    with pytest.raises(UserError) as err:
        parse_target(text, FACE)
    message = str(err.value)
    assert words in message and "\n" not in message


def test_unknown_attribute_lists_the_choices():
    with pytest.raises(UserError, match="yaw, pitch, roll"):
        parse_target("age>30", FACE)


def test_without_attribute_list_any_name_parses():
    assert parse_target("anything<3").attribute == "anything"


def test_undetected_and_unmeasured_images_are_misses():
    result = ProbeResult(
        {"yaw": np.array([20.0, 20.0, np.nan, 5.0, -30.0])},
        np.array([True, False, True, True, True]),
    )
    right = parse_target("yaw>10")
    assert right.holds(result).tolist() == [True, False, False, False, False]
    assert right.share(result) == pytest.approx(1 / 5)
    assert parse_target("yaw<-10").holds(result).tolist() == [False, False, False, False, True]
    assert parse_target("yaw>=5").holds(result).tolist() == [True, False, False, True, False]
    assert right.sign == 1 and parse_target("yaw<=0").sign == -1


def test_holds_refuses_an_attribute_the_probe_did_not_measure():
    result = ProbeResult({"brightness": np.zeros(2)}, np.ones(2, dtype=bool))
    with pytest.raises(UserError, match="measured no 'yaw'"):
        parse_target("yaw>10").holds(result)
