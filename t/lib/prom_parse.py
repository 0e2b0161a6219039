#!/usr/bin/python3

# Parses Prometheus' text exposition format from stdin with the reference
# client's own parser (python3-prometheus-client) and prints the families
# as JSON: [{name, type, help, samples: [{name, labels, value}]}].  A
# sample that follows no # TYPE of its family comes out as a family of
# type "untyped" without help, which is how the tests find one.  Exits 1
# with the parser's complaint on text it rejects.

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def value(v):
    # JSON has no infinities or NaN
    if math.isinf(v) or math.isnan(v):
        return str(v)
    return v


def main():
    text = sys.stdin.read()
    out = []
    try:
        for fam in text_string_to_metric_families(text):
            out.append({
                'name': fam.name,
                'type': fam.type,
                'help': fam.documentation,
                'samples': [{'name': s.name, 'labels': dict(s.labels),
                             'value': value(s.value)} for s in fam.samples],
            })
    except Exception as e:
        print('parse error: %s' % e, file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == '__main__':
    sys.exit(main())
