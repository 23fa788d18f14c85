"""The Parquet manifests a run writes under <output>/manifests, column by column.

- ``sources/``: one row per input file found, kept or rejected.
- ``clips/``: one row per clip span cut from a source, written or rejected.
- ``runs.parquet``: one row per `curate run`, appended.

The first two are Parquet datasets that grow by appending parts as sources finish (manifests.dataset reads
their current view). Every column carries its description in the Parquet field metadata
(``schema.field(name).metadata``), so the files document themselves in pyarrow, pandas and DuckDB.
"""

from __future__ import annotations

import pyarrow as pa

# the stages whose CPU seconds the source pass measures, in the order they run
TIMED_STAGES = ("probe", "decode", "resample", "scale", "shots", "speech", "face", "write")


def _field(name: str, kind: pa.DataType, description: str) -> pa.Field:
    return pa.field(name, kind, nullable=True, metadata={"description": description})


def _rejection(subject: str) -> list[pa.Field]:
    return [
        _field("status", pa.string(), f"'{'ok' if subject == 'source' else 'kept'}' or 'rejected'"
                                  + (" ('removed' in a manifest part: the file left the input folder)"
                                     if subject == "source" else "")),
        _field("reject_stage", pa.string(), f"the stage that rejected the {subject} (null when kept)"),
        _field("reject_reason", pa.string(), "short stable reason code, e.g. no_audio_stream, shot_too_short"),
        _field("reject_detail", pa.string(), "the reason in a sentence, with the numbers behind it"),
    ]


SOURCES = pa.schema([
    _field("source_id", pa.string(), "path of the file relative to the input folder ('/'-separated)"),
    _field("path", pa.string(), "absolute path of the input file (read, never written)"),
    _field("size_bytes", pa.int64(), "file size"),
    _field("mtime_ns", pa.int64(), "file modification time, ns since the epoch"),
    _field("sha256", pa.string(), "sha256 of the file's content; with the fingerprint, the key of resumable work"),
    *_rejection("source"),
    _field("container", pa.string(), "container format as FFmpeg names it"),
    _field("duration_s", pa.float64(), "declared duration of the video stream"),
    _field("video_codec", pa.string(), "video codec"),
    _field("width", pa.int32(), "coded picture width"),
    _field("height", pa.int32(), "coded picture height"),
    _field("fps", pa.float64(), "declared average frame rate"),
    _field("declared_frames", pa.int64(), "frame count the container declares (0 when unknown)"),
    _field("pix_fmt", pa.string(), "pixel format"),
    _field("audio_codec", pa.string(), "audio codec"),
    _field("sample_rate", pa.int32(), "source audio sample rate"),
    _field("channels", pa.int32(), "source audio channels"),
    _field("rotation", pa.int32(), "display rotation applied to make the picture upright, degrees counter-clockwise"),
    _field("decoded_s", pa.float64(), "duration that actually decoded"),
    _field("source_frames", pa.int64(), "frames decoded"),
    _field("frames_out", pa.int64(), "frames on the constant-rate output timeline"),
    _field("dropped_frames", pa.int64(), "source frames that frame-rate conversion skipped"),
    _field("audio_gap_samples", pa.int64(), "silent samples inserted where the audio stream had holes"),
    _field("shot_cuts", pa.list_(pa.int64()), "output frames where a new shot starts"),
    _field("shots_reused", pa.bool_(), "shot cuts were taken from an earlier run with the same content and settings"),
    _field("annotated_intervals", pa.list_(pa.list_(pa.int64())),
           "the only output frame ranges [start, end) clips were cut in (inputs.layout hdtf: the annotated time "
           "intervals, merged); null: the whole video"),
    _field("annotated_frames_clipped", pa.int64(),
           "frames of the annotated intervals past the video's decoded end (null without annotations)"),
    _field("face_detections", pa.int64(), "face detector passes (the landmark model tracks the face in between)"),
    _field("n_clips", pa.int32(), "clip spans cut from the source (kept and rejected)"),
    _field("n_clips_kept", pa.int32(), "clips kept"),
    _field("fingerprint", pa.string(), "fingerprint of the stage settings the row was made with"),
    _field("fingerprints", pa.map_(pa.string(), pa.string()), "per source-pass stage, the fingerprint of its settings "
                                                              "(what a resume compares)"),
    _field("generation", pa.string(), "id of this processing of the source; its clips carry the same"),
    *[_field(f"cpu_{stage}_s", pa.float64(), f"CPU seconds of the {stage} step in the source pass")
      for stage in TIMED_STAGES],
    _field("wall_s", pa.float64(), "wall seconds of the source pass"),
])

CLIPS = pa.schema([
    _field("clip_id", pa.string(), "unique id: the clip file's path under clips/ without '.mp4'"),
    _field("source_id", pa.string(), "the source it was cut from (sources.source_id)"),
    _field("source_sha256", pa.string(), "content hash of that source"),
    _field("clip_index", pa.int32(), "position among the source's clip spans"),
    _field("shot_index", pa.int32(), "the shot it lies in (0-based, in order)"),
    _field("start_frame", pa.int64(), "first frame on the source's 25 fps timeline"),
    _field("end_frame", pa.int64(), "one past the last frame"),
    _field("n_frames", pa.int64(), "end_frame - start_frame"),
    _field("start_s", pa.float64(), "start time in the source's timeline"),
    _field("end_s", pa.float64(), "end time in the source's timeline"),
    _field("duration_s", pa.float64(), "n_frames / fps"),
    _field("fps", pa.int32(), "frame rate of the clip"),
    _field("sample_rate", pa.int32(), "audio sample rate of the clip"),
    _field("audio_samples", pa.int64(), "audio samples written: n_frames * sample_rate / fps exactly"),
    _field("path", pa.string(), "clip file relative to the output folder, face-aligned when face_status is 'done' "
                               "(null when not written)"),
    _field("width", pa.int32(), "clip picture width"),
    _field("height", pa.int32(), "clip picture height"),
    _field("bytes", pa.int64(), "clip file size"),
    *_rejection("clip"),
    _field("clips_status", pa.string(), "clips stage: 'done' or 'rejected'"),
    _field("face_status", pa.string(), "face stage: 'done', 'rejected', 'skipped', or null when not reached"),
    _field("speech_status", pa.string(), "speech stage: 'done', 'rejected', 'skipped', or null when not reached"),
    _field("write_status", pa.string(), "write stage: 'done', or null when not reached"),
    _field("sync_status", pa.string(), "sync stage: 'done', 'rejected', 'skipped', or null when not reached"),
    _field("quality_status", pa.string(), "quality stage: 'done', 'rejected', 'skipped', or null when not reached"),
    _field("duplicates_status", pa.string(), "duplicates stage: 'done', 'rejected' (a copy of a clip kept before it), "
           "'skipped', or null when not reached"),
    _field("face_backend", pa.string(), "landmark backend that aligned the clip: dlib or fan"),
    _field("face_detection_rate", pa.float64(), "share of the clip's frames where the face was found"),
    _field("face_size_px", pa.float64(), "median face width in source pixels (extent of the 68 landmarks)"),
    _field("face_jitter_px", pa.float64(), "RMS frame-to-frame wobble of the crop window, in aligned pixels"),
    _field("face_max_faces", pa.int32(), "most prominent faces one detection pass found in the clip"),
    _field("face_track", pa.int32(), "which face of the shot the clip follows: 0 the largest at the shot's first "
           "detection, k the k-th largest (its clip_id ends in -f<k>)"),
    _field("face_tracks", pa.int32(), "faces followed through the span and judged (stages.face.several_faces)"),
    _field("speaker_group", pa.string(), "the span's clip_id, shared by the clips of its faces when several passed "
           "the face checks; null with one"),
    _field("speaker_cue", pa.float64(), "how well the face's mouth movement follows the speech band's loudness: "
           "mean correlation over 3 s windows at the best lag (faces.speaking)"),
    _field("speaker_lag", pa.int32(), "the lag of that best correlation, frames (> 0: sound before lips)"),
    _field("speaker_choice", pa.string(), "how the kept face of a span with several was chosen: 'cue' (sync "
           "skipped), 'syncnet', or 'syncnet+cue' (confidences within stages.sync.speaker_tie_conf)"),
    _field("face_yaw_deg", pa.float64(), "median |yaw| of the head in degrees (solvePnP of the landmarks on a generic "
           "3-D face); per frame in the side file's `pose` (yaw, pitch, roll)"),
    _field("face_pitch_deg", pa.float64(), "median |pitch| of the head in degrees"),
    _field("face_off_pose_share", pa.float64(), "share of the frames with the face whose yaw or pitch passes its "
           "limit"),
    _field("face_mouth_outside_share", pa.float64(), "share of the frames with the face whose mouth landmarks leave "
           "the picture"),
    _field("face_turn_deg_s", pa.float64(), "95th percentile of how fast the head turns (yaw or pitch), degrees/s"),
    _field("face_move_widths_s", pa.float64(), "95th percentile of how fast the face moves, face widths per second"),
    _field("face_mouth_sharpness", pa.float64(), "median variance of the Laplacian of the aligned mouth (resized to "
           "96x48 luma); per frame in the side file's `mouth_sharpness`"),
    _field("aligned_size", pa.int32(), "side of the aligned square picture"),
    _field("speech_fraction", pa.float64(), "share of the clip's 32 ms audio windows Silero VAD hears as speech"),
    _field("landmarks_path", pa.string(), "per-frame landmarks (source and aligned) and affine matrices (.npz)"),
    _field("sync_offset", pa.int32(), "SyncNet audio-video offset in frames (> 0: sound before lips); the clip's "
                                      "audio has been delayed by it"),
    _field("sync_min_dist", pa.float64(), "SyncNet minimum mean distance over shifts (LSE-D)"),
    _field("sync_conf", pa.float64(), "SyncNet confidence: median minus minimum distance (LSE-C)"),
    _field("quality_score", pa.float64(), "HyperIQA score (0..100 with koniq_pretrained.pkl): mean over the clip's "
                                          "first, middle and last frame"),
    _field("quality_frame_scores", pa.list_(pa.float64()), "HyperIQA score of the first, middle and last frame"),
    _field("video_phash", pa.list_(pa.uint64()), "64-bit pHash of the written frames at 1/8, 3/8, 5/8 and 7/8 of "
           "the clip (stages.duplicates)"),
    _field("audio_hash", pa.uint64(), "64-bit hash of the clip's band energies over time (stages.duplicates; null "
           "for digital silence)"),
    _field("duplicates_of", pa.string(), "the kept clip this one is a copy of (its clip_id; null when none)"),
    _field("duplicates_video_distance", pa.int32(), "bits of the four picture hashes (of 256) that differ from the "
           "kept copy's"),
    _field("duplicates_audio_distance", pa.int32(), "bits of the audio hash (of 64) that differ from the kept copy's"),
    _field("generation", pa.string(), "the processing of the source the clip came from (sources.generation)"),
    _field("sync_fingerprint", pa.string(), "fingerprint of the sync settings that scored the clip (null: not scored)"),
    _field("quality_fingerprint", pa.string(), "fingerprint of the quality settings that scored the clip (null: not "
                                               "scored)"),
    _field("duplicates_fingerprint", pa.string(), "fingerprint of the duplicates settings that judged the clip (null: "
                                                  "not judged)"),
])

STAGE_TIMING = pa.struct([
    pa.field("stage", pa.string()),
    pa.field("cpu_s", pa.float64()),                # CPU seconds it took in this run
    pa.field("wall_s", pa.float64()),               # clip stages: wall seconds of their batches (source-pass
                                                    # stages run fused: their wall time is the sources' wall_s)
    pa.field("sources_computed", pa.int64()),       # source-pass stages: sources it ran for
    pa.field("clips_computed", pa.int64()),         # clip stages: clips it ran for
    pa.field("media_s", pa.float64()),              # seconds of video it worked on (sources', or clips')
])

RUNS = pa.schema([
    _field("run_id", pa.string(), "unique id of the run"),
    _field("started_at", pa.timestamp("ms", tz="UTC"), "when the run started"),
    _field("finished_at", pa.timestamp("ms", tz="UTC"), "when the run finished"),
    _field("wall_s", pa.float64(), "wall seconds of the whole run"),
    _field("command", pa.string(), "the command line"),
    _field("input_dir", pa.string(), "input folder"),
    _field("output_dir", pa.string(), "output folder"),
    _field("config_hash", pa.string(), "hash of the full effective config"),
    _field("fingerprint", pa.string(), "fingerprint of the stage settings"),
    _field("config_json", pa.string(), "the full effective config, as JSON"),
    _field("versions", pa.map_(pa.string(), pa.string()), "versions of Python, this package and its libraries"),
    _field("ray_address", pa.string(), "Ray cluster used ('local' for the embedded one)"),
    _field("cluster_cpus", pa.float64(), "CPUs Ray reported for the cluster"),
    _field("sources_found", pa.int64(), "input files found"),
    _field("sources_processed", pa.int64(), "sources processed in this run"),
    _field("sources_reused", pa.int64(), "sources whose recorded results were still valid"),
    _field("sources_rejected", pa.int64(), "sources rejected (all runs' results)"),
    _field("clips_kept", pa.int64(), "clips kept (all runs' results)"),
    _field("clips_rejected", pa.int64(), "clip spans rejected (all runs' results)"),
    _field("hours_in", pa.float64(), "hours of source video found"),
    _field("hours_out", pa.float64(), "hours of kept clips"),
    _field("stage_timings", pa.list_(STAGE_TIMING), "per stage, in run order: CPU (and, for the clip stages, wall) "
                                                      "seconds in this run, and the seconds of video it worked on"),
    _field("clips_synced", pa.int64(), "clips the sync stage scored in this run"),
    _field("clips_quality_scored", pa.int64(), "clips the quality stage scored in this run"),
])


def columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema]
