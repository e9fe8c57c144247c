"""Streamlit pages. Only this package imports Streamlit."""
