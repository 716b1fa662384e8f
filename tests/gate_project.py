"""What a project that uses the gate writes: the two gate tests, as a module source for ``pytester``."""

GATE_TESTS = '''
def test_recall_not_below_baseline(gate_cell):
    gate_cell.check_baseline()

def test_recall_vs_chance(gate_cell):
    gate_cell.check_chance()
'''
