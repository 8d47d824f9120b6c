"""speechdvae: dynamical variational autoencoders for speech modelling and unsupervised enhancement."""
__version__ = "0.1.0"
