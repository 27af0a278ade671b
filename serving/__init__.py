"""TorchServe handler and config template of the NASLung ensemble (thin shell over ``naslung.scoring``)."""
