"""Headless capture from a camera or a video into a domain's samples (daemon side: Python
3.8+, never imports torch; OpenCV is imported only when a frame is read).

sources.py says which sources may be opened (an allowlist, checked before anything is
opened), frames.py reads and shapes frames through OpenCV, sessions.py runs one background
capture per domain and keeps its progress for the API.
"""
