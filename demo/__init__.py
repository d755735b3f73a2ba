"""The web demo (`make demo`): app.py is the page Streamlit runs, one module per tab (digits.py, music.py) and
common.py for what they share. A package so that the page imports its tabs however Streamlit is started."""
