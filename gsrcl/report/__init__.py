"""The report: the HTML page, summary tables and figures of a results folder."""
