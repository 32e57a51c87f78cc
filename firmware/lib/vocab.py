# SenML vocabulary, generated from protocol/vocabulary.py by
# `python -m protocol.vocabulary > firmware/lib/vocab.py`; do not edit (a test
# compares the two copies).
# Each entry: (name, wire unit, SenML unit, scale, kind, roles).
TABLE = (
    ('level', 'mm', 'mm', 1, 'v', 'shaft'),
    ('dist', 'mm', 'mm', 1, 'v', 'shaft'),
    ('alarm', 'bool', '', 1, 'vb', 'lighting,shaft'),
    ('occ', 'bool', '', 1, 'vb', 'parking'),
    ('mag', 'nT', 'T', 1000000000, 'v', 'parking'),
    ('lux', 'lx', 'lx', 1, 'v', 'lighting'),
    ('pres', 'bool', '', 1, 'vb', 'lighting'),
    ('dim', '%', '%', 1, 'v', 'lighting'),
    ('power', 'mW', 'W', 1000, 'v', 'lighting'),
    ('energy', 'Wh', 'Wh', 1, 'v', 'lighting'),
    ('temp', 'cCel', 'Cel', 100, 'v', 'lighting,parking,shaft'),
    ('batt', 'mV', 'mV', 1, 'v', 'parking,shaft'),
    ('rssi', 'dBm', 'dBm', 1, 'v', 'lighting,parking,shaft'),
    ('fw', 'text', '', 1, 'vs', 'lighting,parking,shaft'),
    ('app', 'text', '', 1, 'vs', 'lighting,parking,shaft'),
    ('reset', 'code', '', 1, 'v', 'lighting,parking,shaft'),
    ('boots', 'count', 'count', 1, 'v', 'lighting,parking,shaft'),
    ('uptime', 's', 's', 1, 'v', 'lighting,parking,shaft'),
    ('heap', 'B', 'B', 1, 'v', 'lighting,parking,shaft'),
    ('faults', 'bits', '', 1, 'v', 'lighting,parking,shaft'),
    ('upd', 'text', '', 1, 'vs', 'lighting,parking,shaft'),
    ('updv', 'text', '', 1, 'vs', 'lighting,parking,shaft'),
    ('updb', 'B', 'B', 1, 'v', 'lighting,parking,shaft'),
    ('updr', 'text', '', 1, 'vs', 'lighting,parking,shaft'),
    ('ack', 'id', '', 1, 'v', 'lighting,parking,shaft'),
    ('rej', 'id', '', 1, 'v', 'lighting,parking,shaft'),
)
