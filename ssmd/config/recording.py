"""The `recording` section: where raw exchange frames are recorded (ssmd.recording.FrameRecorder),
when a recording file is completed (hourly or by size) and how hard it is compressed."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ssmd.config.fields import CwdPath, Section

MIB = 1024 * 1024


class RecordingSettings(Section):
    """Record every raw frame the exchange sends, with its receive time, for `ssmd replay`.

    Files are `{dir}/{name}-{UTC start}-{counter}.jsonl.zst`, written as `.partial` first and
    renamed once complete: after `rotate_interval_s` (by the frames' receive times), once
    `rotate_max_bytes` of JSON lines (before compression) were written, and on shutdown.
    """

    dir: CwdPath = Path("var/recordings")
    rotate_interval_s: float = Field(default=3600.0, gt=0)
    rotate_max_bytes: int = Field(default=512 * MIB, ge=1)  # JSON lines before compression
    zstd_level: int = Field(default=3, ge=1, le=19)  # 3: ~10x smaller, ~1 us per frame
