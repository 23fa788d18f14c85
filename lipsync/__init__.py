"""Lip-sync inference: a video and an audio track in, a video whose mouth follows the audio out.

The pipeline (`pipeline.py`) is the same for every model: frames on the 25 fps timeline, one face tracked
with the face stage's tracker, a crop per frame in the model's framing (`framing.py`), the model behind one
small interface (`models.py`), the generated lower face pasted back with a feathered, colour-matched mask
(`paste.py`), and the result encoded with the input audio (`media.py`). Everything streams: memory does not
grow with the video's length.
"""
