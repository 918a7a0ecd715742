"""Software-defined assets, one module per group, in the order the method reads:
fake_pool -> real_data -> anonymization -> evaluation."""
