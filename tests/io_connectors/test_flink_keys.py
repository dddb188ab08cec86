"""io_connectors._common.flink_keys: a key's Flink subtask as Flink computes it, and lanes that spread a source's
elements over the subtasks; the Kafka reader's partitions carry them."""

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from io_connectors._common.flink_keys import KeyPlacement, _byte_buffer_hash, spread
from io_connectors.streams.kafka import ReadFromKafka
from io_connectors.streams.kafka.reader import KafkaPartition, KafkaPartitionCoder, _with_lane

# (parallelism, max parallelism, key bytes, Java's ByteBuffer.hashCode(), KeyGroupRangeAssignment.assignToKeyGroup,
# .assignKeyToParallelOperator), printed by Flink 1.19.3's own classes for random keys.
FLINK_VECTORS = [
  (2, 128, '978b215eea9a79a094109b03e8d678', 60466557, 63, 0),
  (2, 128, 'e526054b6dc46adf1e0b9a9dc20b60b796548de1ecfb47813cff', -729905728, 48, 0),
  (2, 128, 'deed8563bd03abc610', 548675009, 98, 1),
  (2, 128, 'c2f5970a4dc707d2dd44', -1646463249, 73, 1),
  (2, 128, '4f01', 1071, 98, 1),
  (3, 128, 'e91f980dceba4a46fbc9f177caeef64c7d3f8f4407d0', -546489664, 78, 1),
  (3, 128, '3166c9f4', 516385, 46, 1),
  (3, 128, 'd50d9a8bcf18734f433faccd7f6bb942560b076d09', 969062765, 122, 2),
  (4, 128, '2fd21af0741eede98065d73650', 1738925388, 98, 3),
  (4, 128, 'cd36', 2584, 50, 1),
  (7, 300, '5119a72de98073416ee26b', -1609527933, 25, 0),
  (7, 300, 'befa9e4dc452b2f403dc31b389a5f80337c1966f20b3d85971848569', 17310198, 253, 5),
  (200, 512, '12ae4070c5bb1d438b11db3c', 1642803602, 431, 168),
  (200, 512, '52d19bd1e8f45578eab2754a13d5e8', 2117173092, 62, 24),
]


@pytest.mark.parametrize('parallelism, max_parallelism, key, java_hash, key_group, subtask', FLINK_VECTORS)
def test_a_keys_subtask_is_the_one_flink_computes(parallelism, max_parallelism, key, java_hash, key_group, subtask):
  placement = KeyPlacement(parallelism, max_parallelism)
  key = bytes.fromhex(key)
  assert _byte_buffer_hash(key) == java_hash
  assert placement.key_group(key) == key_group
  assert placement.subtask(key) == subtask


@pytest.mark.parametrize(
  'parallelism, expected', [(1, 128), (2, 128), (85, 128), (86, 256), (200, 512), (21846, 32768), (30000, 32768)]
)
def test_the_default_max_parallelism_is_flinks(parallelism, expected):
  """KeyGroupRangeAssignment.computeDefaultMaxParallelism, as Flink 1.19.3 printed it."""
  assert KeyPlacement(parallelism).max_parallelism == expected


@pytest.mark.parametrize('parallelism, max_parallelism', [(0, None), (2, 1), ('2', None), (2, 2.5)])
def test_a_placement_refuses_impossible_parallelisms(parallelism, max_parallelism):
  with pytest.raises(ValueError, match='parallelism'):
    KeyPlacement(parallelism, max_parallelism)


@pytest.mark.parametrize('parallelism, partitions', [(2, 4), (2, 3), (3, 7), (4, 4), (2, 64)])
def test_partitions_get_lanes_that_put_them_on_the_subtasks_in_turn(parallelism, partitions):
  placement = KeyPlacement(parallelism)
  coder = KafkaPartitionCoder()
  elements = [KafkaPartition('plays.v2-7', p, partitions) for p in range(partitions)]
  placed = spread(elements, coder.encode, _with_lane, placement)
  assert [(e.topic, e.partition, e.partitions) for e in placed] == [
    (e.topic, e.partition, e.partitions) for e in elements
  ]
  assert [placement.element_subtask(coder.encode(e)) for e in placed] == [i % parallelism for i in range(partitions)]
  # Without a placement (not Flink) the lanes stay 0.
  assert spread(elements, coder.encode, _with_lane, None) == elements


def test_where_a_lane_is_never_found_the_element_keeps_lane_0():
  placement = KeyPlacement(2)
  elements = ['a', 'b', 'c']
  # An encoding the lane does not change: every element stays as it is.
  assert spread(elements, lambda e: e.encode(), lambda e, lane: e, placement) == elements


@pytest.mark.parametrize(
  'argv, expected',
  [
    (['--runner=FlinkRunner', '--parallelism=2'], (2, 128)),
    (['--runner=FlinkRunner', '--parallelism=3', '--max_parallelism=64'], (3, 64)),
    (['--runner=FlinkRunner'], None),  # the cluster's default parallelism: not known here
    (['--runner=PortableRunner', '--parallelism=2'], None),
    (['--parallelism=2'], None),
  ],
)
def test_a_jobs_placement_comes_from_its_flink_options(argv, expected):
  placement = KeyPlacement.of_options(PipelineOptions(argv))
  assert (placement and (placement.parallelism, placement.max_parallelism)) == expected


def test_a_kafka_partition_is_encoded_by_its_fields_and_the_read_keys_by_that_coder():
  coder = KafkaPartitionCoder()
  element = KafkaPartition('plays', 3, 4, lane=5)
  assert coder.decode(coder.encode(element)) == element
  assert coder.encode(element) == coder.encode(KafkaPartition('plays', 3, 4, lane=5))
  assert coder.encode(element) != coder.encode(KafkaPartition('plays', 3, 4, lane=6))
  assert coder.is_deterministic()
  assert isinstance(beam.coders.registry.get_coder(KafkaPartition), KafkaPartitionCoder)
  # The splittable read's input (the elements Flink keys the read by) is encoded by it.
  pipeline = beam.Pipeline(options=PipelineOptions(['--runner=FlinkRunner', '--parallelism=2', '--streaming']))
  _ = pipeline | ReadFromKafka(bootstrap_servers='localhost:9092', topics=['plays'])
  proto = pipeline.to_runner_api()
  [read] = [t for t in proto.components.transforms.values() if t.unique_name.endswith('/ReadPartitions')]
  [source] = read.inputs.values()
  assert 'KafkaPartitionCoder' in proto.components.pcollections[source].coder_id
