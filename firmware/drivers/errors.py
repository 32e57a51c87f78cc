# The one error a sensor driver raises: the device is missing, silent, or sent a bad frame.
# `code` is a short reason for the status frame's fault report.


class SensorError(Exception):
    def __init__(self, code, message=""):
        super().__init__(code, message)
        self.code = code
