"""`python train.py recipe=NAME key=value ...`: see speechtrain/train.py and conf/."""

from speechtrain.train import main

if __name__ == "__main__":
    main()
