"""The guest's disk latency lines, summed and turned into quantiles."""

from wanmig.storage.diskio import DiskIo, diskio_from_lines


def test_buckets_sum_over_lines_and_quantiles_are_bucket_upper_bounds() -> None:
    io = diskio_from_lines([
        "wanmig-diskio n=3 bytes=196608 lat=37:2,40:1",
        "some other console line",
        "wanmig-diskio n=1 bytes=65536 lat=60:1",
        "wanmig-diskio n=0 bytes=0 lat=",
    ])
    assert io.writes == 4 and io.bytes == 4 * 65536
    assert dict(io.buckets) == {37: 2, 40: 1, 60: 1}
    assert io.quantile_ms(0.5) == round(2 ** (38 / 4) / 1000, 3)    # bucket 37: 0.61-0.72 ms
    assert io.quantile_ms(0.99) == round(2 ** (61 / 4) / 1000, 3)   # the slow one: ~38 ms
    assert io.summary("guest_io")["guest_io_writes"] == 4


def test_no_lines_no_quantiles() -> None:
    io = DiskIo()
    assert not io.add("wanmig-diskio n=x")
    assert io.quantile_ms(0.5) is None and io.summary("g")["g_writes"] is None
