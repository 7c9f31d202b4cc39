"""The lab: running notebooks headless, their parameters, reports and run set-up."""
