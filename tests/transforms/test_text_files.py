"""The readers and the dead-letter redaction read a text file's name and header one way."""

from transforms.text_files import sniff_delimiter, without_compression_extension


def test_the_delimiter_is_the_most_frequent_of_four_with_comma_on_a_tie():
  lines = ('a;b;c', 'a\tb', 'a|b|c', 'a,b;c', 'a,b,c;d;e;f', 'x;y|z')
  assert [sniff_delimiter(line) for line in lines] == [';', '\t', '|', ',', ';', ';']
  assert [sniff_delimiter(line.encode()) for line in lines] == [';', '\t', '|', ',', ';', ';']


def test_a_line_without_a_delimiter_gets_the_default():
  assert sniff_delimiter('single') == ','
  assert sniff_delimiter(b'single', default=None) is None


def test_compression_extensions_are_taken_off_case_blind_once():
  assert without_compression_extension('s3://b/Events.CSV.GZ') == 's3://b/Events.CSV'
  assert without_compression_extension('events.jsonl.zst') == 'events.jsonl'
  assert without_compression_extension('events.tar.gz.gz') == 'events.tar.gz'
  assert without_compression_extension('events.csv') == 'events.csv'
