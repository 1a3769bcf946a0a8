"""The three conv blocks of Wav2Lip, with the official attribute names (`conv_block.N`)."""

from torch import nn


class Conv2d(nn.Module):
    """Conv + BatchNorm, optional identity residual, then ReLU."""

    def __init__(self, cin, cout, kernel_size, stride, padding, residual=False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x):
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    """ConvTranspose + BatchNorm, then ReLU."""

    def __init__(self, cin, cout, kernel_size, stride, padding, output_padding=0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv_block(x))


class NoNormConv2d(nn.Module):
    """Conv then LeakyReLU(0.01): the discriminator's block (official name `nonorm_Conv2d`)."""

    def __init__(self, cin, cout, kernel_size, stride, padding):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding))
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x):
        return self.act(self.conv_block(x))


def res(ch: int) -> Conv2d:
    """A residual block (cin == cout, k3 s1 p1), the most common layer in all three nets."""
    return Conv2d(ch, ch, 3, 1, 1, residual=True)
