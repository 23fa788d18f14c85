"""Ground floor: reading and writing audio-visual media with PyAV (FFmpeg) and OpenCV.

The probe of a file, the 25 fps timeline that every frame and audio sample is placed on, and the mel
spectrogram the lip-sync networks listen to. Imports nothing of the project above `manifests`.
"""
