"""Shared option parsing: argparse types and option dataclasses read back from saved files."""
import argparse

import pytest

from parasnn.cli.arguments import dataclass_from_dict, positive_int, positive_int_list
from parasnn.calibration.config import CalibrationConfig, CalibrationError
from parasnn.training.train import TrainConfig


def test_argparse_types_accept_positive_integers_and_name_bad_text():
    assert positive_int("3") == 3 and positive_int_list("1, 2,4") == [1, 2, 4]
    for bad in ("0", "-1", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)


@pytest.mark.parametrize("cls, error", [(CalibrationConfig, CalibrationError), (TrainConfig, ValueError)])
def test_saved_options_round_trip_and_unknown_entries_are_named(cls, error):
    assert cls.from_dict(cls().to_dict()) == cls()
    with pytest.raises(error, match=rf"{cls.__name__}: unknown entries \['bogus'\]"):
        cls.from_dict({**cls().to_dict(), "bogus": 1})
    with pytest.raises(error, match="unknown entries"):
        dataclass_from_dict(cls, {"bogus": 1}, error=error)
