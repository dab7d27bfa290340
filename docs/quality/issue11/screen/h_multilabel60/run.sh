cd /tmp/wt
S=random,random:tpt_plateau_min_acc_multilabel=0.5:multilabel_lr_factor=1,ncalr,ncalr:tpt_plateau_min_acc_multilabel=0.5:multilabel_lr_factor=1
one() { .venv/bin/python -m ncalr_backend.bench quality --cycles 5 --initial 0.1 --query 0.05 --width 8 --max-epochs 60 --tpt-window 10 --warm-start true --threads 1 --strategies "$S" --no-plot --seeds $1, --set batch_size=16 --dataset digits-multilabel --multilabel-pairs-fraction 0.5 --out /work/notes/ml60/s$1 > /work/notes/ml60/s$1.log 2>&1; echo "s$1 rc=$?" >> /work/notes/ml60/done.log; }
(one 0; one 2; one 4) &
(one 1; one 3) &
wait
echo ALLDONE >> /work/notes/ml60/done.log
