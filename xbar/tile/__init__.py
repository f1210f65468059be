"""The parts behind :class:`xbar.Crossbar`; none of them imports the façade.

- :mod:`.settings` — the validated options (:class:`Settings`);
- :mod:`.planner` — weights -> target conductances, gains and offsets (:class:`Planner`);
- :mod:`.physics` — the devices: draws, writes, pulses, drift, read variance (:class:`DeviceArray`);
- :mod:`.state` — what the array holds, and its ``state_dict`` (:class:`ArrayState`);
- :mod:`.read` — DAC, per-tile currents, read noise, ADC, digital sums (:class:`ReadPath`);
- :mod:`.arrays` — input validation shared by the stages.
"""
