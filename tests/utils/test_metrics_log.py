"""metrics.jsonl reading and writing (timm_tgr.utils.metrics_log) on hand-written files."""
import logging
import os

import pytest

from timm_tgr.utils import metrics_row, read_metrics, write_metrics

ROWS_TEXT = ('{"epoch": 0, "eval_top1": 50.0}\n\n'
             '{"epoch": 1, "eval_top1": 61.5, "routing": {"7": {"load": [0.5, 0.5]}}}\n')
ROWS = [{'epoch': 0, 'eval_top1': 50.0}, {'epoch': 1, 'eval_top1': 61.5, 'routing': {'7': {'load': [0.5, 0.5]}}}]


def test_reads_rows_in_order_and_ignores_blank_lines(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text(ROWS_TEXT)
    assert read_metrics(path) == ROWS
    assert read_metrics(str(path)) == ROWS


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / 'metrics.jsonl')


def test_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / 'metrics.jsonl'
    path.write_text(ROWS_TEXT + '{"epoch": 2, "eval_t')  # a write cut off mid-row
    with caplog.at_level(logging.WARNING):
        assert read_metrics(path) == ROWS
    assert f'{path}:4' in caplog.text and 'skipped' in caplog.text


@pytest.mark.parametrize('bad', ['{"epoch": 1, "eval_t', '[1, 2]', 'nan-nonsense'])
def test_malformed_middle_line_names_file_and_line(tmp_path, bad):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"epoch": 0}\n' + bad + '\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=f'{path}:2 is not a JSON metrics row'):
        read_metrics(path)


def test_atomic_write_round_trips_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"epoch": 9}\n')  # replaced, not appended to
    write_metrics(path, ROWS)
    assert path.read_text() == (
        '{"epoch": 0, "eval_top1": 50.0}\n{"epoch": 1, "eval_top1": 61.5, "routing": {"7": {"load": [0.5, 0.5]}}}\n')
    assert os.listdir(tmp_path) == ['metrics.jsonl']
    write_metrics(path, [])
    assert path.read_text() == '' and read_metrics(path) == []


def test_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text(ROWS_TEXT)
    with pytest.raises(TypeError):
        write_metrics(path, [{'epoch': 2}, {'epoch': 3, 'bad': object()}])  # not JSON-serializable
    assert path.read_text() == ROWS_TEXT and os.listdir(tmp_path) == ['metrics.jsonl']


def test_metrics_row():
    rows = [{'epoch': 0, 'a': 1}, {'epoch': 1, 'a': 2}, {'epoch': 1, 'a': 3}, {'a': 4}]
    assert metrics_row(rows) == {'a': 4}
    assert metrics_row(rows, 0) == {'epoch': 0, 'a': 1}
    assert metrics_row(rows, 1) == {'epoch': 1, 'a': 3}  # a resumed run may repeat an epoch: the later row
    assert metrics_row(rows, 7) is None
    assert metrics_row([]) is None and metrics_row([], 0) is None
